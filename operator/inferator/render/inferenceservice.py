"""What an InferenceService becomes: Deployment, Service, PDB, NetworkPolicy, autoscaler, ServiceMonitor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from inferator.api.common import API_GROUP, API_VERSION
from inferator.api.inferenceservice import Autoscaling, InferenceServiceSpec, ScalingSignal
from inferator.api.modelcache import Ownership
from inferator.api.profile import API_KEY_ENV, CACHE_CHECK_ENV, DEFAULT_MODEL_DIR, MODEL_DIR_ENV, PROFILE_ENV
from inferator.profiles.select import Selection
from inferator.render import groups
from inferator.render.templating import render_manifest
from inferator.settings import OperatorSettings

SERVICE_LABEL = "inferator.dev/inference-service"
GATEWAY_LABEL = "inferator.dev/inference-gateway"
# On a validation Job's pod: the service it load-tests (its NetworkPolicy admits it).
VALIDATION_LABEL = "inferator.dev/validation"
READINESS_GATE = "inferator.dev/model-ready"
AutoscalerKind = Literal["hpa", "keda"]

# The engine's own Prometheus names for each signal a user can scale on.
# vLLM: vllm/engine/metrics (v1 engine); `vllm:gpu_cache_usage_perc` was removed in favour of kv_cache_usage_perc.
# SGLang: sglang/srt/metrics/collector.py (needs --enable-metrics, which the profile passes).
# trtllm-serve exports request queue metrics under names that changed between releases: not mapped.
ENGINE_SIGNALS: dict[str, dict[str, str]] = {
    "vllm": {
        "queueLength": "vllm:num_requests_waiting",
        "runningRequests": "vllm:num_requests_running",
        "kvCacheUsage": "vllm:kv_cache_usage_perc",
    },
    "sglang": {
        "queueLength": "sglang:num_queue_reqs",
        "runningRequests": "sglang:num_running_reqs",
        "kvCacheUsage": "sglang:token_usage",
    },
}
ENGINE_SIGNALS["vllm-cpu"] = ENGINE_SIGNALS["vllm"]


class UnsupportedSignal(ValueError):
    """The engine exports no metric for the requested autoscaling signal (or no API-key option)."""


# The engine's own variable for the API key, where it reads one; SGLang takes only --api-key,
# which the runtime adds from INFERATOR_API_KEY at exec. trtllm-serve has no API key option.
API_KEY_ENGINE_ENV = {"vllm": "VLLM_API_KEY", "vllm-cpu": "VLLM_API_KEY", "sglang": None}
WARMUP_ANNOTATION = "inferator.dev/warmup"
# On each serving pod: the profile it runs (a validation run measures a pod of its own profile).
PROFILE_ANNOTATION = "inferator.dev/profile"


def _api_key_env(inputs: ServingInputs) -> list[dict[str, Any]]:
    ref = inputs.spec.serving.api_key_secret
    profile = inputs.selection.profile
    if ref is None or profile is None:
        return []
    if profile.engine not in API_KEY_ENGINE_ENV:
        raise UnsupportedSignal(
            f"serving.apiKeySecret: engine {profile.engine} has no API key option; use vllm or sglang "
            "(selector.engines), or put an authenticating gateway in front"
        )
    source = {"valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
    names = [API_KEY_ENV, *filter(None, [API_KEY_ENGINE_ENV[profile.engine]])]
    return [{"name": n, **source} for n in names]


class AutoscalerUnavailable(ValueError):
    """The spec needs KEDA (scale to zero, or backend keda) and the cluster has no ScaledObject CRD."""


def labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "inferator-serving",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "inferator",
        SERVICE_LABEL: name,
    }


def selector(name: str) -> dict[str, str]:
    return {SERVICE_LABEL: name}


def signal_metric(engine: str, signal: ScalingSignal, task: str = "generate") -> str:
    """The engine's Prometheus metric for a signal (cpu needs none).

    Pooling models (embed, rerank, classify) go through the same scheduler and export the
    same request gauges, so queueLength and runningRequests mean the same for them; they keep
    no KV between requests, so KV-cache use says nothing about their load.
    """
    if signal == "kvCacheUsage" and task != "generate":
        raise UnsupportedSignal(
            f"autoscaling.metric 'kvCacheUsage' does not measure a {task} model's load (pooling "
            "models keep no KV between requests); use queueLength or runningRequests"
        )
    metric = ENGINE_SIGNALS.get(engine, {}).get(signal)
    if metric is None:
        supported = [*sorted(ENGINE_SIGNALS.get(engine, {})), "cpu"]
        raise UnsupportedSignal(
            f"autoscaling.metric {signal!r} is not exported by engine {engine}; use one of {supported}"
        )
    return metric


def autoscaler_kind(autoscaling: Autoscaling | None, keda_installed: bool) -> AutoscalerKind | None:
    """HPA by default; KEDA when asked, when it is installed (auto), or to scale to zero."""
    if autoscaling is None:
        return None
    if autoscaling.backend != "auto":
        return autoscaling.backend
    return "keda" if keda_installed or autoscaling.min_replicas == 0 else "hpa"


def binary_quantity(n_bytes: int) -> str:
    """Bytes as the API server's canonical quantity, so a re-read compares equal (no drift, no rewrite)."""
    for suffix, unit in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20)):
        if n_bytes >= unit and n_bytes % unit == 0:
            return f"{n_bytes // unit}{suffix}"
    return f"{-(-n_bytes // (1 << 20))}Mi"


def decimal_quantity(value: float) -> str:
    """A number as a canonical quantity: 4 -> "4", 0.8 -> "800m"."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def endpoint(name: str, namespace: str, port: int) -> str:
    return f"http://{name}.{namespace}.svc:{port}/v1"


@dataclass(frozen=True)
class ServingInputs:
    name: str
    namespace: str
    spec: InferenceServiceSpec
    selection: Selection
    pvc_name: str
    ownership: Ownership
    settings: OperatorSettings
    keda_installed: bool = False
    servicemonitor_installed: bool = False
    # leaderworkerset.x-k8s.io/v1 served: multi-node replicas as one LeaderWorkerSet.
    lws_installed: bool = False
    # pvc:// caches: the model's directory inside the claim, and the runtime checks files in
    # place (there is no manifest: the claim is the user's and is never written).
    model_subpath: str = ""
    in_place: bool = False
    cache_revision: str = ""


def _hpa_metric(engine: str, autoscaling: Autoscaling, task: str) -> dict[str, Any]:
    if autoscaling.metric == "cpu":
        return {"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": int(autoscaling.target)}}}  # fmt: skip
    # A custom-metrics adapter (prometheus-adapter) exposes `vllm:num_requests_waiting` as
    # `vllm_num_requests_waiting` per pod; the chart's docs carry the adapter rule.
    name = signal_metric(engine, autoscaling.metric, task).replace(":", "_")
    return {"type": "Pods", "pods": {"metric": {"name": name},
            "target": {"type": "AverageValue", "averageValue": decimal_quantity(autoscaling.target)}}}  # fmt: skip


def _keda_trigger(
    inputs: ServingInputs, autoscaling: Autoscaling, engine: str, served: str, task: str
) -> dict[str, Any]:
    """One KEDA trigger. The Prometheus query sums over pods: KEDA's default AverageValue target
    divides that sum by the target per replica, so `target` means "per replica" for every signal
    (an average would cap the replicas at ceil(1 / target) for a fraction like KV-cache use)."""
    if autoscaling.metric == "cpu":
        return {
            "type": "cpu",
            "metricType": "Utilization",
            "metadata": {"value": str(int(autoscaling.target))},
        }
    metric = signal_metric(engine, autoscaling.metric, task)
    query = f'sum({metric}{{namespace="{inputs.namespace}",model_name="{served}"}})'
    return {"type": "prometheus", "metadata": {"serverAddress": inputs.settings.prometheus_url,
            "query": query, "threshold": str(autoscaling.target)}}  # fmt: skip


def gateway_trigger(inputs: ServingInputs) -> dict[str, Any]:
    """Keeps a service that may scale to zero up while an InferenceGateway holds or serves its
    requests, and wakes it from zero on KEDA's next poll (the gateway itself also moves it 0 -> 1
    at once). Without it KEDA would see only the engine's queue, empty on a replica still
    loading, and could scale that replica away again. The threshold is out of reach on purpose:
    this trigger only activates; the engine's signal decides how many replicas."""
    where = f'namespace="{inputs.namespace}",service="{inputs.name}"'
    query = (f"(sum(inferator_gateway_held_requests{{{where}}}) or vector(0))"
             f" + (sum(inferator_gateway_in_flight_requests{{{where}}}) or vector(0))")  # fmt: skip
    return {"type": "prometheus", "name": "gateway-requests",
            "metadata": {"serverAddress": inputs.settings.prometheus_url, "query": query,
                         "threshold": "1000000", "activationThreshold": "0"}}  # fmt: skip


def _peers(inputs: ServingInputs) -> list[dict[str, Any]]:
    net = inputs.spec.networking
    peers: list[dict[str, Any]] = [
        {"podSelector": {"matchLabels": net.allowed_pod_labels} if net.allowed_pod_labels else {}}
    ]
    if net.allowed_pod_labels:  # an InferenceGateway's pods in the namespace authenticate their callers
        peers.append({"podSelector": {"matchExpressions": [{"key": GATEWAY_LABEL, "operator": "Exists"}]}})
        if inputs.spec.validation is not None and inputs.spec.validation.enabled:
            peers.append({"podSelector": {"matchLabels": {VALIDATION_LABEL: inputs.name}}})
    namespaces = sorted({*net.allowed_namespaces, inputs.settings.operator_namespace})
    peers.append({"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}]}})  # fmt: skip
    return peers


def merge_affinity(pool: dict[str, Any], user: dict[str, Any] | None) -> dict[str, Any]:
    """The pod's affinity: the pool's required node terms ANDed with the user's, the rest added.

    Node selector terms are ORed by Kubernetes, so an AND of two lists of terms is every pair
    of terms with their expressions joined.
    """
    user = dict(user or {})
    user_node = dict(user.pop("nodeAffinity", None) or {})
    ours = pool["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    theirs = (user_node.pop("requiredDuringSchedulingIgnoredDuringExecution", None) or {}).get(
        "nodeSelectorTerms"
    ) or [{}]
    terms = []
    for a in ours:
        for b in theirs:
            term = {"matchExpressions": [*a.get("matchExpressions", []), *b.get("matchExpressions", [])]}
            if b.get("matchFields"):
                term["matchFields"] = b["matchFields"]
            terms.append(term)
    node: dict[str, Any] = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}
    node |= user_node  # preferredDuringSchedulingIgnoredDuringExecution, as given
    return {"nodeAffinity": node, **user}


def _resources(inputs: ServingInputs) -> dict[str, Any]:
    user = inputs.spec.resources
    requests: dict[str, Any] = dict(user.requests or {}) if user else {}
    limits: dict[str, Any] = dict(user.limits or {}) if user else {}
    if inputs.selection.memory_request_bytes and "memory" not in requests:
        # CPU engines hold weights and KV cache in RAM; GPU engines their workers and /dev/shm:
        # a request makes the pod Burstable, not BestEffort (evicted first).
        requests["memory"] = binary_quantity(inputs.selection.memory_request_bytes)
    gpus = inputs.selection.gpu_request
    if gpus:
        requests["nvidia.com/gpu"] = str(gpus)
        limits["nvidia.com/gpu"] = str(gpus)
    return {
        k: {r: str(v) for r, v in d.items()} for k, d in (("requests", requests), ("limits", limits)) if d
    }


def render_children(inputs: ServingInputs) -> list[dict[str, Any]]:
    """Every object the service needs, in apply order. Raises UnsupportedSignal for an impossible autoscaler."""
    profile = inputs.selection.profile
    if profile is None:
        raise ValueError("render_children needs a successful selection")
    spec, name, namespace = inputs.spec, inputs.name, inputs.namespace
    common = {"name": name, "namespace": namespace, "labels": labels(name), "selector": selector(name)}
    # The clients' Service: every pod, or a multi-node group's leaders only (rank 0 serves the API).
    service_selector = selector(name) | (
        groups.leader_selector(inputs.lws_installed) if profile.nodes > 1 else {}
    )
    kind = autoscaler_kind(spec.autoscaling, inputs.keda_installed)
    env = {
        PROFILE_ENV: profile.model_dump_json(by_alias=True, exclude_none=True),
        MODEL_DIR_ENV: DEFAULT_MODEL_DIR,
        "HOME": "/tmp",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        **({CACHE_CHECK_ENV: "in-place"} if inputs.in_place else {}),
        **inputs.selection.env,
    }
    scheduling = spec.scheduling
    tolerations = [
        *inputs.selection.tolerations,
        *((t.to_k8s() for t in scheduling.tolerations or []) if scheduling else []),
    ]
    objects = [
        render_manifest(
            "serving-deployment.yaml.j2",
            **common,
            profile=profile,
            replicas=None if kind else spec.replicas,
            readiness_gate=READINESS_GATE,
            ownership=inputs.ownership,
            affinity=merge_affinity(
                inputs.selection.node_affinity, scheduling.affinity if scheduling else None
            ),
            topology_spread=scheduling.topology_spread_constraints if scheduling else None,
            image_pull_secrets=[r.to_k8s() for r in (scheduling.image_pull_secrets or [])]
            if scheduling
            else [],
            user_env=[*_api_key_env(inputs), *spec.env],
            warmup_in_pod=spec.serving.api_key_secret is not None,
            env_from=spec.env_from,
            node_selector=scheduling.node_selector if scheduling and scheduling.node_selector else None,
            tolerations=tolerations,
            scheduling=scheduling,
            image=spec.image or inputs.settings.engine_images[profile.engine],
            env=[{"name": k, "value": v} for k, v in env.items()],
            resources=_resources(inputs),
            startup_failure_threshold=max(1, spec.serving.startup_timeout_seconds // 10),
            model_dir=DEFAULT_MODEL_DIR,
            model_subpath=inputs.model_subpath,
            cache_revision=inputs.cache_revision,
            pvc_name=inputs.pvc_name,
            shm_size=binary_quantity(max(inputs.selection.shm_size_bytes, 64 << 20)),
        ),
        render_manifest(
            "serving-service.yaml.j2",
            **common | {"selector": service_selector},
            port=profile.port,
        ),
        render_manifest(
            "serving-networkpolicy.yaml.j2",
            **common,
            peers=_peers(inputs),
            allow_egress=spec.networking.allow_egress,
            group=profile.nodes > 1,
        ),
    ]
    if profile.nodes > 1:
        deployment = objects.pop(0)
        assert inputs.selection.pool is not None
        domain = groups.group_domains(inputs.selection.pool, profile.nodes)
        # Groups follow spec.replicas, which an autoscaler writes through the InferenceService's
        # scale subresource: a group is one replica, so it comes and goes whole.
        if inputs.lws_installed:
            objects.insert(0, groups.render_leader_worker_set(
                deployment, service=name, namespace=namespace, groups=spec.replicas, size=profile.nodes,
                port=profile.port, health_path=profile.health_path, topology_key=domain[0]))  # fmt: skip
        else:
            objects[:0] = groups.render_groups(deployment, service=name, namespace=namespace, groups=spec.replicas,
                                               size=profile.nodes, port=profile.port, health_path=profile.health_path,
                                               domain=domain)  # fmt: skip
        target = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "InferenceService", "name": name}
    else:
        target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    most_replicas = spec.autoscaling.max_replicas if spec.autoscaling else spec.replicas
    if most_replicas > 1:
        # One replica (a whole group) at a time: an eviction takes a group's member, the operator
        # restarts that group, and its pods count as unavailable until it is back.
        objects.append(render_manifest("serving-pdb.yaml.j2", **common))
    if kind == "hpa" and spec.autoscaling:
        objects.append(render_manifest("serving-hpa.yaml.j2", **common, autoscaling=spec.autoscaling, target=target,
                                       metric=_hpa_metric(profile.engine, spec.autoscaling, profile.task)))  # fmt: skip
    elif kind == "keda" and spec.autoscaling:
        if not inputs.keda_installed:
            raise AutoscalerUnavailable(
                "autoscaling needs KEDA (minReplicas: 0 or backend: keda) but the cluster has no "
                "ScaledObject CRD (keda.sh/v1alpha1): install KEDA, or set autoscaling.backend: hpa "
                "with minReplicas >= 1"
            )
        triggers = [
            _keda_trigger(inputs, spec.autoscaling, profile.engine, profile.served_model_name, profile.task)
        ]
        if spec.autoscaling.min_replicas == 0:
            triggers.append(gateway_trigger(inputs))
        objects.append(render_manifest("serving-scaledobject.yaml.j2", **common, autoscaling=spec.autoscaling,
                                       target=target, triggers=triggers))  # fmt: skip
    if inputs.servicemonitor_installed:
        objects.append(
            render_manifest("serving-servicemonitor.yaml.j2", **common, metrics_path=profile.metrics_path)
        )
    return objects
