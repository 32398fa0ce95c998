"""`inferator warmup`: the readiness warm-up, run by the operator against a pod, or in the pod.

A server that requires an API key (spec.serving.apiKeySecret) cannot be warmed up by the
operator, which never reads Secrets; the serving container's startup probe runs this command
instead, with the key from its own environment, and the operator opens the gate once that
probe has passed. Either way the check is the same: the model is listed, and one token is
generated.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from inferator.api.profile import API_KEY_ENV, PROFILE_ENV, ServingProfile

WARMUP_TIMEOUT_S = 30


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _post(url: str, payload: dict[str, Any], api_key: str | None = None) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 (http to a pod IP the operator read from the API)
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", **_headers(api_key)},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=WARMUP_TIMEOUT_S) as response:  # noqa: S310 (pod IP, http)
        return dict(json.loads(response.read()))


def warm_up(pod_ip: str, port: int, served_model_name: str, api_key: str | None = None) -> tuple[bool, str]:
    """List models, then ask for one token. Returns (passed, what the server said)."""
    base = f"http://{pod_ip}:{port}"
    try:
        listing = urllib.request.Request(f"{base}/v1/models", headers=_headers(api_key))  # noqa: S310
        with urllib.request.urlopen(listing, timeout=WARMUP_TIMEOUT_S) as response:  # noqa: S310
            models = [m.get("id") for m in json.loads(response.read()).get("data", [])]
        if served_model_name not in models:
            return False, f"/v1/models lists {models}, not {served_model_name!r}"
        answer = _post(
            f"{base}/v1/completions",
            {"model": served_model_name, "prompt": "Hello", "max_tokens": 1},
            api_key,
        )
        if not answer.get("choices"):
            return False, f"/v1/completions answered without choices: {json.dumps(answer)[:300]}"
        return True, f"{served_model_name} listed and answered a one-token completion"
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")[:300]
        return False, f"{exc.url} answered HTTP {exc.code}: {body}"
    except (OSError, ValueError) as exc:
        return False, f"warm-up request failed: {exc}"


def main(argv: list[str]) -> int:
    """In the serving container: warm up this pod's own server; exit 0 when it passed."""
    profile = ServingProfile.model_validate_json(os.environ[PROFILE_ENV])
    passed, message = warm_up(
        "127.0.0.1", profile.port, profile.served_model_name, os.environ.get(API_KEY_ENV)
    )
    print(f"inferator warmup: {message}", file=sys.stdout if passed else sys.stderr)
    return 0 if passed else 1
