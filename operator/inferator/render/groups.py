"""A multi-node replica as objects every cluster has: one StatefulSet per group, a headless Service.

A profile spanning N nodes (tensor parallel within a node, one pipeline stage per node) runs as
groups of N pods, each pod holding every GPU of its node. Without LeaderWorkerSet, each group is
a StatefulSet of N pods (`podManagementPolicy: Parallel`: the pods rendezvous, none waits for
another to be Ready), named by ordinal, so rank = pod index (the `apps.kubernetes.io/pod-index`
label every StatefulSet pod carries) and the leader is `<group>-0` under one headless Service.
The client Service selects leaders only. What LeaderWorkerSet does itself, the operator does:
a group whose member was replaced or restarted is restarted whole (controllers), and groups
scale by adding StatefulSets.

Pure: the Deployment rendered for the profile is the pod template, changed where a group
differs (rank and leader in the environment, exec probes that know the rank, the rendezvous
port, the topology domain).
"""

from __future__ import annotations

import copy
import datetime
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from inferator.profiles.engines import LEADER_ENV, RANK_ENV, RENDEZVOUS_PORT
from inferator.profiles.pools import GpuPool

GROUP_LABEL = "inferator.dev/group"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
# LeaderWorkerSet (leaderworkerset.x-k8s.io/v1): its rank label on every pod, its placement
# annotation (the variables it sets in every container are engines.LWS_RANK_ENV, LWS_LEADER_ENV).
LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"
LWS_WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
LWS_EXCLUSIVE_TOPOLOGY = "leaderworkerset.sigs.k8s.io/exclusive-topology"


def rank_of(labels: Mapping[str, str]) -> str | None:
    """A group pod's rank from its labels (either path); None for a pod of no group."""
    if LWS_WORKER_INDEX_LABEL in labels:
        return labels[LWS_WORKER_INDEX_LABEL]
    if GROUP_LABEL in labels:
        return labels.get(POD_INDEX_LABEL, "0")
    return None


def is_worker(labels: Mapping[str, str]) -> bool:
    """A group's pod other than its leader: it serves no API."""
    rank = rank_of(labels)
    return rank is not None and rank != "0"


def leader_selector(lws: bool) -> dict[str, str]:
    """What the clients' Service adds to its selector: the leaders only."""
    return {LWS_WORKER_INDEX_LABEL: "0"} if lws else {POD_INDEX_LABEL: "0"}


# StatefulSet pod names (<group>-<ordinal>) must stay a DNS label, and the controller-revision-hash
# label (<group>-<10 chars>) at most 63 characters.
_MAX_GROUP_NAME = 50


def _bounded(name: str, limit: int) -> str:
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"{name[: limit - 7]}-{digest}"


def headless_name(service: str) -> str:
    return _bounded(service, 63 - len("-group")) + "-group"


def group_name(service: str, index: int) -> str:
    suffix = f"-g{index}"
    return _bounded(service, _MAX_GROUP_NAME - len(suffix)) + suffix


def leader_address(service: str, namespace: str, index: int) -> str:
    return f"{group_name(service, index)}-0.{headless_name(service)}.{namespace}.svc"


def group_domains(pool: GpuPool, size: int) -> tuple[str | None, list[str]]:
    """The pool's topology label and its values that hold a whole group (most nodes first);
    (None, []) when its nodes carry no common topology label: groups are not confined."""
    return pool.topology_key, [value for value, count in pool.domains if count >= size]


def render_leader_worker_set(
    deployment: Mapping[str, Any],
    *,
    service: str,
    namespace: str,
    groups: int,
    size: int,
    port: int,
    health_path: str,
    topology_key: str | None,
) -> dict[str, Any]:
    """One LeaderWorkerSet for every group, where its API is installed. LWS creates the groups,
    their headless Services and the rank and leader variables (LWS_WORKER_INDEX,
    LWS_LEADER_ADDRESS, which the runtime reads), restarts a group whose pod restarted
    (RecreateGroupOnPodRestart) and rolls groups one at a time. The leader keeps the engine's
    HTTP probes; workers, which serve nothing, get the rank-aware exec probe.

    Rendered against LWS's documented v1 API; its controller is not part of this project's test
    bed (docs/multi-node.md)."""
    leader = copy.deepcopy(deployment["spec"]["template"])
    _add_rendezvous_port(leader["spec"]["containers"][0])
    worker = copy.deepcopy(leader)
    _use_rank_aware_probes(worker["spec"]["containers"][0], port, health_path)
    meta: dict[str, Any] = {
        "name": service,
        "namespace": namespace,
        "labels": dict(deployment["metadata"]["labels"]),
    }
    if topology_key:
        # Every pod of a group in one domain, one group per domain (LWS places the leader first).
        meta["annotations"] = {LWS_EXCLUSIVE_TOPOLOGY: topology_key}
    return {
        "apiVersion": LWS_API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": meta,
        "spec": {
            "replicas": groups,
            "startupPolicy": "LeaderCreated",
            "rolloutStrategy": {
                "type": "RollingUpdate",
                "rollingUpdateConfiguration": {"maxUnavailable": 1, "maxSurge": 0},
            },
            "leaderWorkerTemplate": {
                "size": size,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader,
                "workerTemplate": worker,
            },
        },
    }


def _add_rendezvous_port(container: dict[str, Any]) -> None:
    container["ports"] = [*container["ports"], {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT,
                                                 "protocol": "TCP"}]  # fmt: skip


def _use_rank_aware_probes(container: dict[str, Any], port: int, path: str) -> None:
    """The engine's HTTP probes as `inferator probe` (timings kept): a worker serves no HTTP."""
    command = ["inferator", "probe", "--port", str(port), "--path", path]
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(name)
        if probe and "httpGet" in probe:
            kept = {k: v for k, v in probe.items() if k not in ("httpGet", "exec")}
            container[name] = {"exec": {"command": command}, **kept}


def render_groups(
    deployment: Mapping[str, Any],
    *,
    service: str,
    namespace: str,
    groups: int,
    size: int,
    port: int,
    health_path: str,
    domain: tuple[str | None, list[str]],
) -> list[dict[str, Any]]:
    """The headless Service and one StatefulSet per group, from the profile's Deployment."""
    labels = dict(deployment["metadata"]["labels"])
    selector = dict(deployment["spec"]["selector"]["matchLabels"])
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": headless_name(service), "namespace": namespace, "labels": labels},
        "spec": {
            "clusterIP": "None",
            # Workers look the leader up before anything is Ready: that is the rendezvous.
            "publishNotReadyAddresses": True,
            "selector": selector,
            "ports": [
                {
                    "name": "rendezvous",
                    "port": RENDEZVOUS_PORT,
                    "targetPort": RENDEZVOUS_PORT,
                    "protocol": "TCP",
                }
            ],
        },
    }
    key, domains = domain
    out: list[dict[str, Any]] = [headless]
    for index in range(groups):
        template = copy.deepcopy(deployment["spec"]["template"])
        group = {GROUP_LABEL: str(index)}
        template["metadata"]["labels"] = {**template["metadata"]["labels"], **group}
        pod = template["spec"]
        container = pod["containers"][0]
        container["env"] = [
            *container["env"],
            {
                "name": RANK_ENV,
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{POD_INDEX_LABEL}']"}},
            },
            {"name": LEADER_ENV, "value": leader_address(service, namespace, index)},
        ]
        _add_rendezvous_port(container)
        _use_rank_aware_probes(container, port, health_path)
        if key is not None and domains:
            # Group g in the g-th domain that holds a whole group, round robin: its pods all land
            # in one rack or zone, chosen before the first one is scheduled.
            pod["nodeSelector"] = {**(pod.get("nodeSelector") or {}), key: domains[index % len(domains)]}
        out.append(
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": {
                    "name": group_name(service, index),
                    "namespace": namespace,
                    "labels": {**labels, **group},
                },
                "spec": {
                    "serviceName": headless_name(service),
                    "replicas": size,
                    "podManagementPolicy": "Parallel",
                    # The operator rolls a group whole (group_restart): never one pod of it.
                    "updateStrategy": {"type": "OnDelete"},
                    "selector": {"matchLabels": {**selector, **group}},
                    "template": template,
                },
            }
        )
    return out


def _time(text: str | None) -> float:
    try:
        return datetime.datetime.fromisoformat((text or "").replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


# When the group last started together (set by the operator when it restarts one; else the
# StatefulSet's creation). Pods created later than START_WINDOW after it replaced a member.
STARTED_ANNOTATION = "inferator.dev/group-started"
REVISION_LABEL = "controller-revision-hash"
# Room for a group's pods to be (re)created together: their graceful termination (the serving
# pod's 60 s) and scheduling. A member created later than this after the start replaced one.
START_WINDOW_S = 90.0


@dataclass(frozen=True)
class GroupRestart:
    """Pods to delete so that a group starts again together, and why."""

    group: str
    pods: tuple[str, ...]
    reason: str


def group_restart(statefulset: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> GroupRestart | None:
    """Whether a group must start again, whole.

    A group's engines rendezvous once. A member that restarted (its container exited) or was
    replaced (deleted, evicted, its node gone) leaves the others waiting on a peer that will not
    come back; a new pod template (image, cache revision) must reach every member at once, so
    the StatefulSet updates OnDelete and the operator deletes the group. LeaderWorkerSet's
    RecreateGroupOnPodRestart, done by hand. Every pod goes (the replaced one too), so the new
    ones start within START_WINDOW_S of each other."""
    meta = statefulset.get("metadata") or {}
    group = str((meta.get("labels") or {}).get(GROUP_LABEL, ""))
    members = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    if not members:
        return None
    names = tuple(sorted(p["metadata"]["name"] for p in members))
    revision = ((statefulset.get("status") or {}).get("updateRevision")) or ""
    stale = [p["metadata"]["name"] for p in members
             if revision and ((p["metadata"].get("labels") or {}).get(REVISION_LABEL) or revision) != revision]  # fmt: skip
    if stale:
        return GroupRestart(
            group, names, f"pod {stale[0]} runs an older template: the group moves to the new one together"
        )
    restarted = [
        p["metadata"]["name"]
        for p in members
        if any(
            (cs.get("restartCount") or 0) > 0 for cs in (p.get("status") or {}).get("containerStatuses") or []
        )
    ]
    if restarted:
        return GroupRestart(
            group, names, f"pod {restarted[0]} restarted: the group's engines restart together"
        )
    started = _time((meta.get("annotations") or {}).get(STARTED_ANNOTATION) or meta.get("creationTimestamp"))
    late = [
        p["metadata"]["name"]
        for p in members
        if _time(p["metadata"].get("creationTimestamp")) - started > START_WINDOW_S
    ]
    if late and len(late) < len(members):
        return GroupRestart(
            group, names, f"pod {late[0]} replaced a member: the others restart to rendezvous with it"
        )
    return None
