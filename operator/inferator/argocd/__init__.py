"""Argo CD health checks for Inferator's kinds (Lua, as Argo CD runs them), and a way to run them here.

Argo CD reads them from `argocd-cm` under `resource.customizations.health.inferator.dev_<Kind>`
(docs/gitops.md). `health()` runs the same Lua with lupa, so tests check exactly what Argo CD runs.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

KINDS = ("InferenceService", "ModelCache")


def lua_source(kind: str) -> str:
    return resources.files(__package__).joinpath(f"{kind}.lua").read_text()


def argocd_cm_data() -> dict[str, str]:
    """The `argocd-cm` data entries that install both health checks."""
    return {f"resource.customizations.health.inferator.dev_{kind}": lua_source(kind) for kind in KINDS}


def health(obj: dict[str, Any]) -> dict[str, str]:
    """Evaluate the kind's health check on an object, as Argo CD would: {"status": ..., "message": ...}."""
    import lupa

    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    to_lua = lua.eval(
        """
        function(convert)
          local function walk(v)
            if python.builtins.isinstance(v, python.builtins.dict) then
              local t = {}
              for k in python.iter(v) do t[k] = walk(v[k]) end
              return t
            elseif python.builtins.isinstance(v, python.builtins.list) then
              local t = {}
              for item in python.iter(v) do t[#t + 1] = walk(item) end
              return t
            end
            return v
          end
          return walk(convert)
        end
        """
    )
    check = lua.eval(f"function(obj)\n{lua_source(obj['kind'])}\nend")
    result = check(to_lua(obj))
    return {"status": str(result["status"]), "message": str(result["message"] or "")}
