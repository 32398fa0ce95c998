"""The serving children rendered from a real selection: pure functions, no cluster."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inferator.api.inferenceservice import InferenceServiceSpec
from inferator.api.modelcache import Ownership
from inferator.dev.nodes import DEFAULT_NODES, node_manifest
from inferator.profiles import facts_from_config, select_profile
from inferator.render import inferenceservice as render
from inferator.settings import OperatorSettings

LLAMA_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
    "num_hidden_layers": 32, "max_position_embeddings": 131072, "vocab_size": 128256,
    "torch_dtype": "bfloat16",
}  # fmt: skip
NODES = [node_manifest(n) for n in DEFAULT_NODES]


def children(**spec: Any) -> dict[str, dict[str, Any]]:
    keda = spec.pop("keda_installed", False)
    parsed = InferenceServiceSpec.model_validate({"modelCacheRef": {"name": "llama"}, **spec})
    facts = facts_from_config(LLAMA_8B, weight_bytes=16_060_522_496, parameter_count=8_030_261_248)
    selection = select_profile(facts, NODES, parsed, served_model_name="llama")
    assert selection.ok, selection.message
    inputs = render.ServingInputs(
        name="chat", namespace="team-a", spec=parsed, selection=selection, pvc_name="llama-weights",
        ownership=Ownership(run_as_user=1000, run_as_group=1000, fs_group=1000),
        settings=OperatorSettings(), keda_installed=keda,
    )  # fmt: skip
    return {obj["kind"]: obj for obj in render.render_children(inputs)}


def container(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    return result


def test_deployment_asks_for_the_profiles_gpus_on_its_pool() -> None:
    objs = children()
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    profile = json.loads(next(e["value"] for e in container(objs)["env"] if e["name"] == "INFERATOR_PROFILE"))
    gpus = profile["tensorParallelSize"]
    assert container(objs)["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    expressions = [e for t in terms for e in t["matchExpressions"]]
    assert any(e["key"] == "nvidia.com/gpu.product" for e in expressions)
    assert container(objs)["command"] == ["inferator", "runtime"]


def test_pod_is_restricted_reads_the_cache_as_its_owner_and_mounts_no_token() -> None:
    pod = children()["Deployment"]["spec"]["template"]["spec"]
    sc = pod["securityContext"]
    assert (sc["runAsNonRoot"], sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (True, 1000, 1000, 1000)
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    csc = pod["containers"][0]["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "llama-weights", "readOnly": True}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["model"]["readOnly"] is True


def test_offline_environment_and_probes_on_the_engines_health_path() -> None:
    c = container(children(serving={"startupTimeoutSeconds": 1800}))
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    # the startup budget is the spec's, in probe periods of 10 s
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] == 1800
    assert c["livenessProbe"]["httpGet"]["path"] == c["readinessProbe"]["httpGet"]["path"] == "/health"


def test_rollouts_never_need_a_spare_gpu_and_pods_carry_the_readiness_gate() -> None:
    deployment = children()["Deployment"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    gates = deployment["spec"]["template"]["spec"]["readinessGates"]
    assert gates == [{"conditionType": render.READINESS_GATE}]


def test_network_policy_denies_egress_by_default_and_admits_chosen_namespaces() -> None:
    policy = children(networking={"allowedNamespaces": ["apps"]})["NetworkPolicy"]["spec"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    assert policy.get("egress", []) == []
    namespaces = policy["ingress"][0]["from"][1]["namespaceSelector"]["matchExpressions"][0]["values"]
    assert namespaces == ["apps", "inferator-system"]


def test_single_replica_gets_no_pdb_and_fixed_replicas() -> None:
    objs = children(replicas=1)
    assert "PodDisruptionBudget" not in objs and "HorizontalPodAutoscaler" not in objs
    assert objs["Deployment"]["spec"]["replicas"] == 1


def test_hpa_scales_on_the_engines_queue_metric_and_leaves_replicas_to_it() -> None:
    objs = children(autoscaling={"minReplicas": 1, "maxReplicas": 4, "metric": "queueLength", "target": 8})
    assert "replicas" not in objs["Deployment"]["spec"], "the autoscaler owns replicas"
    hpa = objs["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 4)
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "vllm_num_requests_waiting"
    assert hpa["metrics"][0]["pods"]["target"]["averageValue"] == "8"
    assert objs["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize(
    "spec",
    [{"minReplicas": 0, "maxReplicas": 2}, {"minReplicas": 1, "maxReplicas": 2}],
    ids=["scale-to-zero", "auto-with-keda-installed"],
)
def test_keda_scaled_object_when_installed_and_for_scale_to_zero(spec: dict[str, Any]) -> None:
    objs = children(autoscaling={**spec, "metric": "kvCacheUsage", "target": 0.8}, keda_installed=True)
    assert "HorizontalPodAutoscaler" not in objs
    scaled = objs["ScaledObject"]["spec"]
    assert scaled["minReplicaCount"] == spec["minReplicas"]
    query = scaled["triggers"][0]["metadata"]["query"]
    assert query == 'sum(vllm:kv_cache_usage_perc{namespace="team-a",model_name="llama"})'
    assert scaled["triggers"][0]["metadata"]["threshold"] == "0.8"
    names = [t.get("name") for t in scaled["triggers"][1:]]
    # At zero, a gateway's held and in-flight requests keep KEDA active (only activation: the
    # threshold is out of reach, the engine's signal sizes the service).
    assert names == (["gateway-requests"] if spec["minReplicas"] == 0 else [])
    if names:
        gateway = scaled["triggers"][1]["metadata"]
        assert 'inferator_gateway_held_requests{namespace="team-a",service="' in gateway["query"]
        assert (
            "inferator_gateway_in_flight_requests" in gateway["query"]
            and gateway["activationThreshold"] == "0"
        )


def test_auto_without_keda_falls_back_to_an_hpa_on_the_same_signal() -> None:
    objs = children(
        autoscaling={"minReplicas": 1, "maxReplicas": 2, "metric": "kvCacheUsage", "target": 0.8},
        keda_installed=False,
    )
    assert "ScaledObject" not in objs
    metric = objs["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric == "vllm_kv_cache_usage_perc"


def test_gpu_pod_is_burstable_with_its_workers_and_shm_requested() -> None:
    """GPUs are not a QoS resource: without a memory request the pod would be BestEffort."""
    objs = children()
    resources = container(objs)["resources"]
    profile = json.loads(next(e["value"] for e in container(objs)["env"] if e["name"] == "INFERATOR_PROFILE"))
    gpus = profile["tensorParallelSize"]
    requested = resources["requests"]["memory"]
    assert requested.endswith("Gi")
    shm = next(v for v in objs["Deployment"]["spec"]["template"]["spec"]["volumes"] if v["name"] == "shm")
    shm_gi = int(shm["emptyDir"]["sizeLimit"].removesuffix("Gi"))
    assert int(requested.removesuffix("Gi")) == 4 * gpus + shm_gi


def test_probes_give_a_busy_engine_time_to_answer() -> None:
    c = container(children())
    assert c["readinessProbe"]["timeoutSeconds"] >= 5
    assert c["livenessProbe"]["timeoutSeconds"] >= 5
    assert c["startupProbe"]["timeoutSeconds"] >= 5


def test_keda_cpu_uses_the_cpu_trigger() -> None:
    objs = children(autoscaling={"maxReplicas": 2, "metric": "cpu", "target": 70}, keda_installed=True)
    assert objs["ScaledObject"]["spec"]["triggers"] == [
        {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}}
    ]


def test_scale_to_zero_without_keda_is_refused_with_what_to_do() -> None:
    with pytest.raises(render.AutoscalerUnavailable, match=r"install KEDA, or set autoscaling\.backend: hpa"):
        children(autoscaling={"minReplicas": 0, "maxReplicas": 2})


def test_cpu_profile_requests_the_memory_it_needs() -> None:
    objs = children(selector={"engines": ["vllm-cpu"]}, serving={"maxModelLen": 4096})
    assert container(objs)["resources"]["requests"]["memory"].endswith(("Mi", "Gi"))
    assert "nvidia.com/gpu" not in container(objs)["resources"].get("limits", {})


def test_a_signal_the_engine_does_not_export_is_refused_with_the_choices() -> None:
    with pytest.raises(
        render.UnsupportedSignal, match=r"not exported by engine trtllm; use one of \['cpu'\]"
    ):
        children(autoscaling={"maxReplicas": 2, "metric": "queueLength"}, selector={"engines": ["trtllm"]})


def test_platform_fields_reach_the_serving_pod() -> None:
    """imagePullSecrets, env/envFrom from Secrets, pod anti-affinity and topology spread, as given."""
    anti = {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"inferator.dev/inference-service": "chat"}},
         "topologyKey": "kubernetes.io/hostname"}]}  # fmt: skip
    spread = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
              "labelSelector": {"matchLabels": {"inferator.dev/inference-service": "chat"}}}  # fmt: skip
    zone = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-a"]}]}]},
        "preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "preference": {"matchExpressions": [{"key": "spot", "operator": "DoesNotExist"}]}}]}  # fmt: skip
    objs = children(
        scheduling={"affinity": {"podAntiAffinity": anti, "nodeAffinity": zone},
                    "topologySpreadConstraints": [spread], "imagePullSecrets": [{"name": "registry"}]},
        env=[{"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "engine-key", "key": "key"}}}],
        envFrom=[{"secretRef": {"name": "engine-extra"}}],
    )  # fmt: skip
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["topologySpreadConstraints"] == [spread]
    assert pod["affinity"]["podAntiAffinity"] == anti
    node = pod["affinity"]["nodeAffinity"]
    (term,) = node["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    keys = [e["key"] for e in term["matchExpressions"]]
    assert "nvidia.com/gpu.product" in keys and "topology.kubernetes.io/zone" in keys  # ANDed, not ORed
    assert (
        node["preferredDuringSchedulingIgnoredDuringExecution"]
        == zone["preferredDuringSchedulingIgnoredDuringExecution"]
    )
    env = {e["name"]: e for e in container(objs)["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "engine-key"
    assert "INFERATOR_PROFILE" in env
    assert container(objs)["envFrom"] == [{"secretRef": {"name": "engine-extra"}}]


def test_env_may_not_replace_what_the_operator_sets() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="INFERATOR_PROFILE"):
        children(env=[{"name": "INFERATOR_PROFILE", "value": "{}"}])


def test_a_pvc_cache_is_served_from_its_sub_path_and_checked_in_place() -> None:
    parsed = InferenceServiceSpec.model_validate({"modelCacheRef": {"name": "llama"}})
    facts = facts_from_config(LLAMA_8B, weight_bytes=16_060_522_496, parameter_count=8_030_261_248)
    selection = select_profile(facts, NODES, parsed, served_model_name="llama")
    inputs = render.ServingInputs(
        name="chat", namespace="team-a", spec=parsed, selection=selection, pvc_name="weights",
        ownership=Ownership(), settings=OperatorSettings(), model_subpath="llama", in_place=True,
    )  # fmt: skip
    objs = {obj["kind"]: obj for obj in render.render_children(inputs)}
    mount = next(m for m in container(objs)["volumeMounts"] if m["name"] == "model")
    assert mount["subPath"] == "llama" and mount["readOnly"] is True
    env = {e["name"]: e.get("value") for e in container(objs)["env"]}
    assert env["INFERATOR_CACHE_CHECK"] == "in-place"
    assert "subPath" not in next(m for m in container(children())["volumeMounts"] if m["name"] == "model")


def test_an_api_key_comes_from_its_secret_and_the_pod_warms_itself_up() -> None:
    objs = children(
        selector={"engines": ["vllm"]}, serving={"apiKeySecret": {"name": "engine-key", "key": "k"}}
    )
    env = {e["name"]: e for e in container(objs)["env"]}
    ref = {"secretKeyRef": {"name": "engine-key", "key": "k"}}
    assert env["INFERATOR_API_KEY"]["valueFrom"] == ref and env["VLLM_API_KEY"]["valueFrom"] == ref
    assert container(objs)["startupProbe"]["exec"]["command"] == ["inferator", "warmup"]
    template = objs["Deployment"]["spec"]["template"]
    assert template["metadata"]["annotations"]["inferator.dev/warmup"] == "in-pod"
    plain = children()
    assert "httpGet" in container(plain)["startupProbe"]
    assert "inferator.dev/warmup" not in plain["Deployment"]["spec"]["template"]["metadata"]["annotations"]


def test_an_api_key_in_extra_args_or_for_an_engine_without_one_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"serving\.apiKeySecret"):
        children(serving={"extraArgs": ["--api-key=sk-plain-text"]})
    with pytest.raises(render.UnsupportedSignal, match="trtllm has no API key option"):
        children(selector={"engines": ["trtllm"]}, serving={"apiKeySecret": {"name": "k"}})
