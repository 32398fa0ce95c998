"""The readiness gate: a pod takes traffic only after its server lists the model and answers one token."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from inferator.render.inferenceservice import READINESS_GATE

WARMUP_TIMEOUT_S = 30


def _post(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 (http to a pod IP the operator read from the API)
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=WARMUP_TIMEOUT_S) as response:  # noqa: S310 (pod IP, http)
        return dict(json.loads(response.read()))


def warm_up(pod_ip: str, port: int, served_model_name: str) -> tuple[bool, str]:
    """List models, then ask for one token. Returns (passed, what the server said)."""
    base = f"http://{pod_ip}:{port}"
    try:
        with urllib.request.urlopen(f"{base}/v1/models", timeout=WARMUP_TIMEOUT_S) as response:  # noqa: S310
            models = [m.get("id") for m in json.loads(response.read()).get("data", [])]
        if served_model_name not in models:
            return False, f"/v1/models lists {models}, not {served_model_name!r}"
        answer = _post(
            f"{base}/v1/completions", {"model": served_model_name, "prompt": "Hello", "max_tokens": 1}
        )
        if not answer.get("choices"):
            return False, f"/v1/completions answered without choices: {json.dumps(answer)[:300]}"
        return True, f"{served_model_name} listed and answered a one-token completion"
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")[:300]
        return False, f"{exc.url} answered HTTP {exc.code}: {body}"
    except (OSError, ValueError) as exc:
        return False, f"warm-up request failed: {exc}"


def gate_condition(pod: dict[str, Any]) -> dict[str, Any] | None:
    return next(
        (c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == READINESS_GATE),
        None,
    )


def needs_warmup(pod: dict[str, Any]) -> bool:
    """Containers ready (the health probe passes), gate not yet True, pod not going away."""
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or []}
    gate = gate_condition(pod)
    return conditions.get("ContainersReady") == "True" and (gate is None or gate.get("status") != "True")
