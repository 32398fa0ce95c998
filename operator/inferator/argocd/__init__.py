"""Argo CD health checks for Inferator's kinds (Lua, as Argo CD runs them), and a way to run them here.

Argo CD reads them from `argocd-cm` under `resource.customizations.health.inferator.dev_<Kind>`
(docs/gitops.md). `health()` runs the same Lua with lupa, so tests check exactly what Argo CD runs.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

KINDS = ("InferenceGateway", "InferenceService", "ModelCache")


def lua_source(kind: str) -> str:
    return resources.files(__package__).joinpath(f"{kind}.lua").read_text()


def argocd_cm_data() -> dict[str, str]:
    """The `argocd-cm` data entries that install every health check."""
    return {f"resource.customizations.health.inferator.dev_{kind}": lua_source(kind) for kind in KINDS}


# What Argo CD's Lua VM offers a health script: gopher-lua (Lua 5.1) with only the base, table
# and package libraries opened (argo-cd util/lua: SkipOpenLibs, then OpenBase/OpenTable/
# OpenPackage). No `string`, `math` or `os`, and no methods on strings.
_ARGOCD_BASE = (
    "assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget", "rawset", "select",
    "setmetatable", "getmetatable", "tonumber", "tostring", "type", "unpack", "xpcall", "print", "_VERSION",
)  # fmt: skip


def health(obj: dict[str, Any]) -> dict[str, str]:
    """Evaluate the kind's health check on an object as Argo CD would: {"status": ..., "message": ...}.

    Lua 5.1 (gopher-lua's dialect) from lupa, the script's globals limited to what Argo CD
    opens, and the string metatable emptied: a script that calls string.format, math.floor or
    ("x"):upper() fails here as it would show Unknown in Argo CD.
    """
    import lupa.lua51 as lupa51

    lua = lupa51.LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value: Any) -> Any:
        # Tables built from Python (lupa's table_from), not walked from Lua: indexing a Python
        # dict from Lua goes through lupa's attribute/item heuristics.
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items() if v is not None})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    sandboxed = lua.eval(
        """
        function(source, names)
          local env = {table = table, package = package}
          for name in python.iter(names) do env[name] = _G[name] end
          env._G = env
          local chunk = assert(loadstring("return function(obj)\\n" .. source .. "\\nend", "health"))
          setfenv(chunk, env)
          return chunk()
        end
        """
    )
    check = sandboxed(lua_source(obj["kind"]), list(_ARGOCD_BASE))
    arg = to_lua(obj)
    lua.execute('getmetatable("").__index = nil')  # strings lose their methods, as without OpenString
    result = check(arg)
    return {"status": str(result["status"]), "message": str(result["message"] or "")}
