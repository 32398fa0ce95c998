"""Multi-node serving: candidates across nodes, their groups as StatefulSets, ranks in the runtime.

Real published configs (tests/data/model_configs) on node lists shaped like HGX clusters; the
group objects are checked as rendered (the cluster tier runs them on KWOK nodes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from inferator.api.inferenceservice import InferenceServiceSpec
from inferator.api.modelcache import Ownership
from inferator.api.profile import ServingProfile
from inferator.dev.nodes import H100_SXM, NodeSpec, node_manifest
from inferator.profiles.engines import LEADER_ENV, LWS_RANK_ENV, RANK_ENV, rank_args
from inferator.profiles.model_facts import facts_from_directory
from inferator.profiles.select import Selection, select_profile
from inferator.render import groups
from inferator.render import inferenceservice as render
from inferator.runtime import probe
from inferator.runtime.entrypoint import Refusal, assert_group
from inferator.settings import OperatorSettings

CONFIGS = Path(__file__).resolve().parents[1] / "data" / "model_configs"
DEEPSEEK_V3 = facts_from_directory(CONFIGS / "deepseek-ai--deepseek-v3")  # 671 B, FP8: about 680 GB
LLAMA_8B = facts_from_directory(CONFIGS / "meta-llama--llama-3.1-8b")


def h100s(*zones: str) -> list[dict[str, Any]]:
    return [
        node_manifest(NodeSpec(f"h100-{i}", H100_SXM, 8, 192, 2048, "p5.48xlarge", zone=z))
        for i, z in enumerate(zones)
    ]


def select(facts: Any, nodes: list[dict[str, Any]], **spec: Any) -> Selection:
    parsed = InferenceServiceSpec.model_validate({"modelCacheRef": {"name": "m"}, **spec})
    return select_profile(facts, nodes, parsed, served_model_name="m")


def test_a_model_no_node_holds_spans_the_fewest_nodes_of_one_zone() -> None:
    selection = select(DEEPSEEK_V3, h100s("zone-a", "zone-a", "zone-a"))
    assert selection.profile is not None, selection.message
    profile = selection.profile
    assert (profile.nodes, profile.tensor_parallel_size, profile.engine) == (2, 8, "vllm")
    assert profile.name == "vllm-h100-fp8-tp8-pp2-latency"
    assert selection.gpu_request == 8  # every GPU of each node the group spans
    assert profile.command[:3] == ["vllm", "serve", "/models"]
    assert profile.command[
        profile.command.index("--pipeline-parallel-size") : profile.command.index("--nnodes") + 2
    ] == ["--pipeline-parallel-size", "2", "--nnodes", "2"]
    # three nodes would hold it too: held back, a replica spans no more nodes than it needs
    pp3 = next(c for c in selection.candidates if c.name == "vllm-h100-fp8-tp8-pp3-latency")
    assert not pp3.feasible and pp3.held_back and "2 nodes hold the model" in pp3.reason
    # TensorRT-LLM's MPI launch is not rendered: said, not silently dropped
    trt = next(c for c in selection.candidates if c.name.startswith("trtllm-h100-fp8-tp8-pp2"))
    assert not trt.feasible and "multi-node serving is rendered for vllm and sglang only" in trt.reason


def test_a_group_never_spans_zones() -> None:
    selection = select(DEEPSEEK_V3, h100s("zone-a", "zone-b"))
    assert selection.profile is None
    pp2 = next(c for c in selection.candidates if c.name == "vllm-h100-fp8-tp8-pp2-latency")
    assert "needs 2 nodes in one topology.kubernetes.io/zone" in pp2.reason
    assert "has at most 1 in one" in pp2.reason


def test_one_node_first_and_several_only_when_asked_or_needed() -> None:
    one = select(LLAMA_8B, h100s("zone-a", "zone-a"))
    assert one.profile is not None and one.profile.nodes == 1
    assert not [c for c in one.candidates if c.nodes > 1]  # not even considered: a node holds it
    asked = select(LLAMA_8B, h100s("zone-a", "zone-a"), selector={"nodes": [2]})
    assert asked.profile is not None and asked.profile.nodes == 2 and "-tp8-pp2-" in asked.profile.name
    both = select(LLAMA_8B, h100s("zone-a", "zone-a"), selector={"nodes": [1, 2]})
    assert both.profile is not None and both.profile.nodes == 1
    pinned = select(DEEPSEEK_V3, h100s("zone-a", "zone-a"), profile="sglang-h100-fp8-tp8-pp2-throughput")
    assert pinned.profile is not None and pinned.profile.engine == "sglang" and pinned.profile.nodes == 2
    assert pinned.profile.command[-4:] == ["--pp-size", "2", "--nnodes", "2"]


def group_children(
    replicas: int = 2,
    zones: tuple[str, ...] = ("zone-a", "zone-a"),
    lws: bool = False,
    keda: bool = False,
    **spec: Any,
) -> list[dict[str, Any]]:
    parsed = InferenceServiceSpec.model_validate(
        {"modelCacheRef": {"name": "m"}, "replicas": replicas, **spec}
    )
    selection = select_profile(DEEPSEEK_V3, h100s(*zones), parsed, served_model_name="m")
    assert selection.profile is not None and selection.profile.nodes == 2
    inputs = render.ServingInputs(
        name="deepseek", namespace="team-a", spec=parsed, selection=selection, pvc_name="weights",
        ownership=Ownership(), settings=OperatorSettings(), lws_installed=lws, keda_installed=keda,
    )  # fmt: skip
    return render.render_children(inputs)


def test_each_replica_is_a_statefulset_group_of_ranked_pods_under_a_headless_service() -> None:
    objs = group_children()
    kinds = [o["kind"] for o in objs]
    assert "Deployment" not in kinds and kinds.count("StatefulSet") == 2
    headless = next(o for o in objs if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None")
    assert headless["spec"]["publishNotReadyAddresses"] is True
    client = next(o for o in objs if o["kind"] == "Service" and o is not headless)
    assert client["spec"]["selector"] == {render.SERVICE_LABEL: "deepseek", groups.POD_INDEX_LABEL: "0"}
    first, second = (o for o in objs if o["kind"] == "StatefulSet")
    assert first["spec"]["replicas"] == 2 and first["spec"]["podManagementPolicy"] == "Parallel"
    assert first["spec"]["serviceName"] == headless["metadata"]["name"]
    assert first["spec"]["selector"]["matchLabels"][groups.GROUP_LABEL] == "0"
    assert second["spec"]["template"]["metadata"]["labels"][groups.GROUP_LABEL] == "1"
    pod = first["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert (
        env[RANK_ENV]["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.labels['{groups.POD_INDEX_LABEL}']"
    )
    assert env[LEADER_ENV]["value"] == "deepseek-g0-0.deepseek-group.team-a.svc"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[name]["exec"]["command"][:2] == ["inferator", "probe"], name
    assert pod["readinessGates"] and pod["securityContext"]["runAsNonRoot"] is True
    assert pod["nodeSelector"]["topology.kubernetes.io/zone"] == "zone-a"
    policy = next(o for o in objs if o["kind"] == "NetworkPolicy")
    peers = json.dumps(policy["spec"]["egress"])
    assert "kube-dns" in peers and '"inferator.dev/inference-service": "deepseek"' in peers


def test_groups_take_turns_over_the_domains_that_hold_one() -> None:
    objs = group_children(zones=("zone-a", "zone-a", "zone-b", "zone-b", "zone-c"))
    zones = [
        o["spec"]["template"]["spec"]["nodeSelector"]["topology.kubernetes.io/zone"]
        for o in objs
        if o["kind"] == "StatefulSet"
    ]
    assert zones == ["zone-a", "zone-b"]


def test_names_stay_dns_labels_for_long_service_names() -> None:
    name = "a" * 63
    assert len(groups.group_name(name, 12)) <= 50 and len(groups.headless_name(name)) <= 63
    assert groups.group_name(name, 1) != groups.group_name(name, 2)
    assert len(f"{groups.group_name(name, 12)}-15") <= 63  # a pod's name is a hostname


IS_TARGET = {"apiVersion": "inferator.dev/v1alpha1", "kind": "InferenceService", "name": "deepseek"}


def test_an_autoscaler_scales_whole_groups_through_the_inferenceservice_scale_subresource() -> None:
    objs = group_children(autoscaling={"maxReplicas": 3, "backend": "hpa"})
    hpa = next(o for o in objs if o["kind"] == "HorizontalPodAutoscaler")
    # not a StatefulSet (one group's pods) nor the Deployment (there is none): the service itself
    assert hpa["spec"]["scaleTargetRef"] == IS_TARGET
    assert hpa["spec"]["metrics"][0]["type"] == "Pods" and hpa["spec"]["maxReplicas"] == 3
    pdb = next(o for o in objs if o["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1  # one member, hence one group, at a time
    assert pdb["spec"]["selector"]["matchLabels"] == {render.SERVICE_LABEL: "deepseek"}
    assert sum(o["kind"] == "StatefulSet" for o in objs) == 2  # spec.replicas: what the autoscaler wrote

    keda = group_children(replicas=0, autoscaling={"minReplicas": 0, "maxReplicas": 2}, keda=True)
    scaled = next(o for o in keda if o["kind"] == "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"] == IS_TARGET and scaled["spec"]["minReplicaCount"] == 0
    assert not [o for o in keda if o["kind"] == "StatefulSet"], "scaled to zero: no group"
    single = group_children(replicas=1, autoscaling={"maxReplicas": 1, "backend": "hpa"}, lws=True)
    assert (
        next(o for o in single if o["kind"] == "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
        == IS_TARGET
    )
    assert not [o for o in single if o["kind"] == "PodDisruptionBudget"], "one group: no budget to keep"


def test_a_scale_changes_the_generation_but_not_the_spec_revision() -> None:
    from inferator.api.inferenceservice import InferenceServiceStatus
    from inferator.controllers.inferenceservice import selected_generation, spec_revision

    base = {"modelCacheRef": {"name": "m"}, "autoscaling": {"maxReplicas": 3}}
    one, three = (InferenceServiceSpec.model_validate(base | {"replicas": n}) for n in (1, 3))
    changed = InferenceServiceSpec.model_validate(base | {"replicas": 3, "serving": {"extraArgs": ["--x"]}})
    assert spec_revision(one) == spec_revision(three) != spec_revision(changed)
    status = InferenceServiceStatus(profile="p", profile_generation=4, spec_revision=spec_revision(one))
    assert selected_generation(status, spec_revision(three), 9) == 4, (
        "scaled: the profile stays selected for 4"
    )
    assert selected_generation(status, spec_revision(changed), 9) == 9, "changed: select again"
    assert (
        selected_generation(InferenceServiceStatus(profile="p", profile_generation=4), spec_revision(one), 9)
        == 9
    )


def pod(name: str, created: str, restarts: int = 0, revision: str = "rev-1") -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {groups.GROUP_LABEL: "0", groups.REVISION_LABEL: revision},
                         "creationTimestamp": created},
            "status": {"containerStatuses": [{"name": "server", "restartCount": restarts}]}}  # fmt: skip


STS = {"metadata": {"name": "deepseek-g0", "labels": {groups.GROUP_LABEL: "0"}, "creationTimestamp": "2026-12-01T10:00:00Z"},
       "status": {"updateRevision": "rev-1"}}  # fmt: skip


def test_a_group_that_lost_a_member_or_changed_its_template_restarts_whole() -> None:
    healthy = [pod("g0-0", "2026-12-01T10:00:00Z"), pod("g0-1", "2026-12-01T10:00:40Z")]  # within the window
    assert groups.group_restart(STS, healthy) is None
    replaced = [pod("g0-0", "2026-12-01T10:00:00Z"), pod("g0-1", "2026-12-01T10:30:00Z")]
    restart = groups.group_restart(STS, replaced)
    assert (
        restart is not None
        and restart.pods == ("g0-0", "g0-1")
        and "g0-1 replaced a member" in restart.reason
    )
    # after the operator restarted it (the annotation), the pods recreated within the window are one group,
    # however long the old ones took to terminate
    restarted_at = {
        **STS,
        "metadata": {**STS["metadata"], "annotations": {groups.STARTED_ANNOTATION: "2026-12-01T10:30:05Z"}},
    }
    again = [pod("g0-0", "2026-12-01T10:31:05Z"), pod("g0-1", "2026-12-01T10:30:06Z")]
    assert groups.group_restart(restarted_at, again) is None
    crashed = [pod("g0-0", "2026-12-01T10:00:00Z"), pod("g0-1", "2026-12-01T10:00:00Z", restarts=1)]
    restart = groups.group_restart(STS, crashed)
    assert restart is not None and restart.pods == ("g0-0", "g0-1") and "g0-1 restarted" in restart.reason
    rolled = {**STS, "status": {"updateRevision": "rev-2"}}
    restart = groups.group_restart(rolled, healthy)
    assert restart is not None and "older template" in restart.reason
    everyone_new = [
        pod("g0-0", "2026-12-01T11:00:00Z"),
        pod("g0-1", "2026-12-01T11:00:01Z"),
    ]  # all evicted, all back
    assert groups.group_restart(STS, everyone_new) is None


def test_the_runtime_adds_the_pods_rank_and_its_leader() -> None:
    profile = ServingProfile.model_validate(
        {"name": "vllm-h100-fp8-tp8-pp2-latency", "engine": "vllm", "precision": "fp8", "tensorParallelSize": 8,
         "nodes": 2, "target": "latency", "command": ["vllm", "serve", "/models"], "servedModelName": "m"}
    )  # fmt: skip
    leader = "deepseek-g0-0.deepseek-group.team-a.svc"
    line, args = assert_group(profile, {RANK_ENV: "0", LEADER_ENV: leader})
    assert args == ["--node-rank", "0", "--master-addr", leader] and "leader, rank 0 of 2" in line
    _, worker = assert_group(profile, {RANK_ENV: "1", LEADER_ENV: leader})
    assert worker == ["--node-rank", "1", "--master-addr", leader, "--headless"]
    assert rank_args("sglang", 1, leader) == ["--node-rank", "1", "--dist-init-addr", f"{leader}:29500"]
    with pytest.raises(Refusal, match="is not a rank from 0 to 1"):
        assert_group(profile, {RANK_ENV: "2", LEADER_ENV: leader})
    with pytest.raises(Refusal, match="INFERATOR_LEADER_ADDRESS is not set"):
        assert_group(profile, {RANK_ENV: "0"})


def test_a_workers_probe_passes_without_an_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RANK_ENV, "1")
    assert probe.main(["--port", "9"]) == 0
    monkeypatch.setenv(RANK_ENV, "0")
    assert probe.main(["--port", "9", "--timeout", "1"]) == 1  # the leader's endpoint must answer
    assert (probe.RANK_ENV, probe.LWS_RANK_ENV) == (RANK_ENV, LWS_RANK_ENV)


def test_where_leaderworkerset_is_installed_one_leaderworkerset_holds_every_group() -> None:
    """Pure output against LWS's documented v1 API: its controller is not in this test bed."""
    objs = group_children(replicas=3, lws=True)
    # no StatefulSet, no headless Service of ours (LWS makes its own); a PDB over the pods (LWS's
    # StatefulSets have a scale, so the budget counts them): one member, hence one group, at a time
    assert sorted(o["kind"] for o in objs) == [
        "LeaderWorkerSet",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
    ]
    lws = next(o for o in objs if o["kind"] == "LeaderWorkerSet")
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1" and lws["metadata"]["name"] == "deepseek"
    assert lws["metadata"]["annotations"] == {groups.LWS_EXCLUSIVE_TOPOLOGY: "topology.kubernetes.io/zone"}
    spec = lws["spec"]
    assert spec["replicas"] == 3 and spec["startupPolicy"] == "LeaderCreated"
    template = spec["leaderWorkerTemplate"]
    assert template["size"] == 2 and template["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader, worker = template["leaderTemplate"], template["workerTemplate"]
    assert leader["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/health"
    assert worker["spec"]["containers"][0]["readinessProbe"]["exec"]["command"][:2] == ["inferator", "probe"]
    for pod in (leader, worker):
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True and pod["spec"]["readinessGates"]
        assert RANK_ENV not in {e["name"] for e in pod["spec"]["containers"][0]["env"]}  # LWS sets its own
    client = next(o for o in objs if o["kind"] == "Service")
    assert client["spec"]["selector"][groups.LWS_WORKER_INDEX_LABEL] == "0"
    profile = ServingProfile.model_validate(
        {"name": "x", "engine": "vllm", "precision": "fp8", "tensorParallelSize": 8, "nodes": 2,
         "target": "latency", "command": ["vllm", "serve", "/models"], "servedModelName": "m"}
    )  # fmt: skip
    _, args = assert_group(profile, {"LWS_WORKER_INDEX": "1", "LWS_LEADER_ADDRESS": "deepseek-0.deepseek"})
    assert args == ["--node-rank", "1", "--master-addr", "deepseek-0.deepseek", "--headless"]
    assert groups.is_worker({groups.LWS_WORKER_INDEX_LABEL: "1"}) and not groups.is_worker(
        {groups.LWS_WORKER_INDEX_LABEL: "0"}
    )
