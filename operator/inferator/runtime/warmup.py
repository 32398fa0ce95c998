"""`inferator warmup`: the readiness warm-up, run by the operator against a pod, or in the pod.

A server that requires an API key (spec.serving.apiKeySecret) cannot be warmed up by the
operator, which never reads Secrets; the serving container's startup probe runs this command
instead, with the key from its own environment, and the operator opens the gate once that
probe has passed. Either way the check is the same: the model is listed, and it answers one
request of its task on that task's endpoint (profiles/tasks.ENDPOINTS): one generated token,
one embedding, the scores of two documents, or one input's class probabilities. A pooling
model cannot answer a completion, so a completion would keep its gate closed for ever.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from inferator.api.profile import API_KEY_ENV, PROFILE_ENV, ServingProfile
from inferator.profiles.tasks import ENDPOINTS

WARMUP_TIMEOUT_S = 30


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _post(url: str, payload: dict[str, Any], api_key: str | None = None) -> Any:
    request = urllib.request.Request(  # noqa: S310 (http to a pod IP the operator read from the API)
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", **_headers(api_key)},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=WARMUP_TIMEOUT_S) as response:  # noqa: S310 (pod IP, http)
        return json.loads(response.read())


def task_request(task: str, model: str) -> dict[str, Any]:
    """The smallest request of `task` (the body sent to tasks.ENDPOINTS[task])."""
    if task == "embed":
        return {"model": model, "input": "Hello"}
    if task == "rerank":
        return {"model": model, "query": "Hello", "documents": ["Hello", "Goodbye"]}
    if task == "classify":
        return {"model": model, "input": "Hello"}
    return {"model": model, "prompt": "Hello", "max_tokens": 1}


def task_answer_problem(task: str, answer: Any) -> str:
    """'' when `answer` is what `task`'s endpoint returns on success, else what is wrong with it."""
    if task == "embed":
        data = answer.get("data") if isinstance(answer, dict) else None
        vector = data[0].get("embedding") if data and isinstance(data[0], dict) else None
        return "" if isinstance(vector, list) and vector else "answered without an embedding"
    if task == "rerank":
        # vLLM (Jina/Cohere style) answers {"results": [...]}; SGLang a bare list.
        results = answer.get("results") if isinstance(answer, dict) else answer
        return "" if isinstance(results, list) and len(results) == 2 else "answered without two scores"
    if task == "classify":
        data = answer.get("data") if isinstance(answer, dict) else None
        probs = data[0].get("probs") if data and isinstance(data[0], dict) else None
        return "" if isinstance(probs, list) and probs else "answered without class probabilities"
    choices = answer.get("choices") if isinstance(answer, dict) else None
    return "" if choices else "answered without choices"


_DONE = {
    "generate": "answered a one-token completion",
    "embed": "answered an embedding",
    "rerank": "scored two documents",
    "classify": "classified one input",
}


def warm_up(
    pod_ip: str, port: int, served_model_name: str, api_key: str | None = None, task: str = "generate"
) -> tuple[bool, str]:
    """List models, then one request of the model's task. Returns (passed, what the server said)."""
    base = f"http://{pod_ip}:{port}"
    try:
        listing = urllib.request.Request(f"{base}/v1/models", headers=_headers(api_key))  # noqa: S310
        with urllib.request.urlopen(listing, timeout=WARMUP_TIMEOUT_S) as response:  # noqa: S310
            models = [m.get("id") for m in json.loads(response.read()).get("data", [])]
        if served_model_name not in models:
            return False, f"/v1/models lists {models}, not {served_model_name!r}"
        path = ENDPOINTS[task]
        answer = _post(f"{base}{path}", task_request(task, served_model_name), api_key)
        if problem := task_answer_problem(task, answer):
            return False, f"{path} {problem}: {json.dumps(answer)[:300]}"
        return True, f"{served_model_name} listed and {_DONE[task]} ({path})"
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")[:300]
        return False, f"{exc.url} answered HTTP {exc.code}: {body}"
    except (OSError, ValueError) as exc:
        return False, f"warm-up request failed: {exc}"


def main(argv: list[str]) -> int:
    """In the serving container: warm up this pod's own server; exit 0 when it passed."""
    profile = ServingProfile.model_validate_json(os.environ[PROFILE_ENV])
    passed, message = warm_up(
        "127.0.0.1", profile.port, profile.served_model_name, os.environ.get(API_KEY_ENV), profile.task
    )
    print(f"inferator warmup: {message}", file=sys.stdout if passed else sys.stderr)
    return 0 if passed else 1
