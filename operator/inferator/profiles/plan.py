"""`inferator plan`: which profile would this model get on these nodes? Offline, before deploying.

The model comes from a config.json, a model directory (config.json + safetensors headers), or
a ModelCache in the cluster; the nodes from a YAML file or the live cluster. Selection is the
operator's own `select_profile`, so the answer is the one the operator would give.

Exit codes: 0 a profile was selected, 1 nothing fits (reasons on stderr), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import ValidationError

from inferator.api.inferenceservice import Engine, InferenceServiceSpec, Precision
from inferator.api.modelcache import ModelFacts
from inferator.profiles.catalog import (
    BUILTIN_CATALOG,
    COMPUTE_MAJOR_LABEL,
    COMPUTE_MINOR_LABEL,
    FAMILY_LABEL,
    GPU_RESOURCE,
    MEMORY_LABEL,
    PRODUCT_LABEL,
    GpuSpec,
    catalog_from_config,
)
from inferator.profiles.measured import CONFIGMAP, Measured, measured_for, model_identity
from inferator.profiles.memory import GIB, gib
from inferator.profiles.model_facts import facts_from_config, facts_from_directory
from inferator.profiles.select import ScoredCandidate, Selection, select_profile
from inferator.profiles.settings import SelectionSettings

EXIT_SELECTED = 0
EXIT_NOTHING_FITS = 1
EXIT_BAD_INPUT = 2
DEFAULT_ROWS = 12


class PlanInputError(Exception):
    """Input the user must fix (file missing, YAML of the wrong shape); exit code 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inferator plan",
        description="Which serving profile would a model get on these nodes? (offline dry run of the operator's selection)",
        epilog="Exit codes: 0 selected, 1 nothing fits (reasons on stderr), 2 bad input. "
        "JSON output is documented in docs/plan-json.md.",
    )
    p.add_argument(
        "model", nargs="?", help="a config.json, or a model directory (config.json + *.safetensors)"
    )
    p.add_argument(
        "--model-cache", metavar="NAMESPACE/NAME", help="read the model facts of a ModelCache in the cluster"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--nodes", type=Path, help="YAML: a Node list (kubectl get nodes -o yaml) or the short form"
    )
    src.add_argument("--in-cluster", action="store_true", help="read nodes with the pod's service account")
    p.add_argument(
        "--kubeconfig", help="kubeconfig for the live cluster (default: $KUBECONFIG or ~/.kube/config)"
    )
    p.add_argument("--max-model-len", type=int, help="context length (default: the model's, shrunk to fit)")
    p.add_argument("--min-concurrency", type=int, default=1, help="sequences of max length the KV must hold")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument(
        "--engine", action="append", default=[], choices=get_args(Engine), help="allowed engine (repeatable)"
    )
    p.add_argument(
        "--precision",
        action="append",
        default=[],
        choices=get_args(Precision),
        help="allowed precision (repeatable)",
    )
    p.add_argument(
        "--tp", action="append", type=int, default=[], help="allowed tensor parallel size (repeatable)"
    )
    p.add_argument(
        "--gpu", action="append", default=[], help="allowed GPU product or short name (repeatable)"
    )
    p.add_argument("--optimize-for", choices=["latency", "throughput"])
    p.add_argument(
        "--nodes-per-replica",
        type=int,
        action="append",
        help="nodes per replica to consider (repeatable; default: one, several only when no node holds the model)",
    )
    p.add_argument(
        "--rank-by",
        choices=["static", "measured"],
        help="measured: validation numbers first (read with --model-cache from the live cluster)",
    )
    p.add_argument(
        "--measurements-namespace",
        default="inferator-system",
        help=f"where the operator keeps ConfigMap {CONFIGMAP} (its own namespace)",
    )
    p.add_argument("--profile", help="pin a profile: checked for feasibility, never re-ranked")
    p.add_argument(
        "--served-model-name", help="name clients send as `model` (default: the model's directory)"
    )
    p.add_argument("--settings", type=Path, help="YAML of the operator's selection settings")
    p.add_argument("--catalog", type=Path, help="YAML GPU catalog extension (a ConfigMap or its data)")
    p.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    p.add_argument("--all", action="store_true", help="list every candidate in the table")
    return p


def _load_yaml_documents(path: Path) -> list[Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlanInputError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise PlanInputError(f"{path} is not valid YAML: {exc}") from exc


def short_form_node(entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Node dicts from one short-form entry (see docs/plan-json.md, "Nodes file")."""
    name = str(entry.get("name") or "node")
    count = int(entry.get("count", 1))
    gpus = int(entry.get("gpus", 0))
    labels = {str(k): str(v) for k, v in (entry.get("labels") or {}).items()}
    if entry.get("product"):
        labels[PRODUCT_LABEL] = str(entry["product"])
    if entry.get("memoryMiB") is not None:
        labels[MEMORY_LABEL] = str(entry["memoryMiB"])
    if entry.get("compute") is not None:
        major, _, minor = str(entry["compute"]).partition(".")
        labels[COMPUTE_MAJOR_LABEL] = major
        labels[COMPUTE_MINOR_LABEL] = minor or "0"
    if entry.get("family"):
        labels[FAMILY_LABEL] = str(entry["family"])
    allocatable = {"cpu": str(entry.get("cpu", 8)), "memory": str(entry.get("memory", "64Gi"))}
    if gpus:
        allocatable[GPU_RESOURCE] = str(gpus)
    nodes = []
    for index in range(count):
        node_name = name if count == 1 else f"{name}-{index}"
        nodes.append(
            {
                "metadata": {"name": node_name, "labels": dict(labels)},
                "spec": {"taints": list(entry.get("taints") or [])},
                "status": {"allocatable": dict(allocatable)},
            }
        )
    return nodes


def nodes_from_documents(documents: Iterable[Any]) -> list[dict[str, Any]]:
    """Node dicts from YAML documents: Node, NodeList/List (`items`), a list of Nodes, or `nodes:` short form."""
    nodes: list[dict[str, Any]] = []
    for doc in documents:
        if isinstance(doc, list):
            nodes.extend(nodes_from_documents(doc))
        elif isinstance(doc, Mapping) and isinstance(doc.get("items"), list):
            nodes.extend(nodes_from_documents(doc["items"]))
        elif isinstance(doc, Mapping) and isinstance(doc.get("nodes"), list):
            for entry in doc["nodes"]:
                if not isinstance(entry, Mapping):
                    raise PlanInputError(f"short-form node entry must be a mapping, found {entry!r}")
                nodes.extend(short_form_node(entry))
        elif isinstance(doc, Mapping) and (doc.get("kind") == "Node" or {"metadata", "status"} <= doc.keys()):
            nodes.append(dict(doc))
        else:
            raise PlanInputError(
                "nodes file: expected Node objects (kubectl get nodes -o yaml), a list of them, "
                f"or a `nodes:` short form; found {str(doc)[:80]!r}"
            )
    return nodes


def _load_kube_config(kubeconfig: str | None, in_cluster: bool) -> None:
    import kubernetes

    load_incluster: Callable[[], None] = kubernetes.config.load_incluster_config
    load_kubeconfig: Callable[..., None] = kubernetes.config.load_kube_config
    try:
        if in_cluster:
            load_incluster()
        else:
            load_kubeconfig(config_file=kubeconfig)
    except Exception as exc:  # the client raises several unrelated types for "no usable config"
        raise PlanInputError(
            f"no cluster to read from ({exc}); pass --nodes FILE, or --kubeconfig PATH"
        ) from exc


def _nodes_from_cluster(kubeconfig: str | None, in_cluster: bool) -> list[dict[str, Any]]:
    import kubernetes

    _load_kube_config(kubeconfig, in_cluster)
    api = kubernetes.client.CoreV1Api()
    items = api.list_node().items
    return [api.api_client.sanitize_for_serialization(item) for item in items]


def _facts_from_cluster(
    ref: str, kubeconfig: str | None, in_cluster: bool
) -> tuple[ModelFacts, str, dict[str, Any]]:
    import kubernetes

    from inferator.api.common import API_GROUP, API_VERSION

    namespace, _, name = ref.rpartition("/")
    if not name:
        raise PlanInputError(f"--model-cache {ref!r}: expected NAMESPACE/NAME")
    _load_kube_config(kubeconfig, in_cluster)
    api = kubernetes.client.CustomObjectsApi()
    try:
        obj: Any = api.get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace or "default", "modelcaches", name
        )
    except kubernetes.client.ApiException as exc:
        raise PlanInputError(f"cannot read ModelCache {ref}: {exc.status} {exc.reason}") from exc
    model = ((obj or {}).get("status") or {}).get("model")
    if not model:
        raise PlanInputError(f"ModelCache {ref} has no status.model yet (is its prefetch Job done?)")
    return ModelFacts.model_validate(model), name, obj


def _measured_from_cluster(cache: Mapping[str, Any], namespace: str) -> dict[tuple[str, str], Measured]:
    """The operator's validation numbers for the cache's model; none when unreadable (the plan
    then ranks as it always does, and says so)."""
    import kubernetes

    status = cache.get("status") or {}
    model = model_identity(
        ((cache.get("spec") or {}).get("source") or {}).get("uri", ""),
        status.get("resolvedRevision"),
        status.get("contentHash"),
    )
    try:
        found = kubernetes.client.CoreV1Api().read_namespaced_config_map(CONFIGMAP, namespace)
    except kubernetes.client.ApiException as exc:
        print(f"inferator plan: no measurements ({namespace}/{CONFIGMAP}: {exc.status} {exc.reason})",
              file=sys.stderr)  # fmt: skip
        return {}
    return measured_for(found.data or {}, model)


def _facts_from_path(path_text: str) -> tuple[ModelFacts, str]:
    path = Path(path_text)
    try:
        if path.is_dir():
            return facts_from_directory(path), path.name
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PlanInputError(f"cannot read model from {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise PlanInputError(f"{path}: expected a JSON object (a Hugging Face config.json)")
    try:
        name = path.parent.name if path.name == "config.json" else path.stem
        return facts_from_config(config), name or "model"
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanInputError(f"{path}: not a decoder config.json this planner understands ({exc!r})") from exc


def _settings(path: Path | None) -> SelectionSettings:
    if path is None:
        return SelectionSettings()
    docs = _load_yaml_documents(path)
    data = docs[0] if docs else {}
    if isinstance(data, Mapping) and isinstance(data.get("selection"), Mapping):
        data = data["selection"]
    try:
        return SelectionSettings.from_dict(dict(data))
    except (ValidationError, TypeError, ValueError) as exc:
        raise PlanInputError(f"{path}: invalid selection settings: {exc}") from exc


def _catalog(path: Path | None) -> dict[str, GpuSpec]:
    if path is None:
        return dict(BUILTIN_CATALOG)
    docs = _load_yaml_documents(path)
    data = docs[0] if docs else {}
    if isinstance(data, Mapping) and data.get("kind") == "ConfigMap":
        data = data.get("data") or {}
    if not isinstance(data, Mapping):
        raise PlanInputError(f"{path}: expected a ConfigMap or a mapping of GPU products")
    try:
        return catalog_from_config(data)
    except (ValueError, TypeError) as exc:
        raise PlanInputError(f"{path}: {exc}") from exc


def _spec(args: argparse.Namespace, name: str) -> InferenceServiceSpec:
    selector: dict[str, Any] = {}
    for key, values in (
        ("engines", args.engine),
        ("precisions", args.precision),
        ("tensorParallelSizes", args.tp),
        ("gpuProducts", args.gpu),
    ):
        if values:
            selector[key] = values
    if args.optimize_for:
        selector["optimizeFor"] = args.optimize_for
    if args.rank_by:
        selector["rankBy"] = args.rank_by
    if args.nodes_per_replica:
        selector["nodes"] = args.nodes_per_replica
    if args.profile and selector:
        raise PlanInputError(
            "--profile pins a profile: it excludes --engine/--precision/--tp/--gpu/--optimize-for/--rank-by"
        )
    serving: dict[str, Any] = {
        "minConcurrency": args.min_concurrency,
        "gpuMemoryUtilization": args.gpu_memory_utilization,
    }
    if args.max_model_len is not None:
        serving["maxModelLen"] = args.max_model_len
    if args.served_model_name:
        serving["servedModelName"] = args.served_model_name
    body: dict[str, Any] = {"modelCacheRef": {"name": _k8s_name(name)}, "serving": serving}
    if selector:
        body["selector"] = selector
    if args.profile:
        body["profile"] = args.profile
    try:
        return InferenceServiceSpec.model_validate(body)
    except ValidationError as exc:
        raise PlanInputError(f"invalid options: {exc}") from exc


def _k8s_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in name.lower()).strip("-.")
    return cleaned[:253] or "model"


def _candidate_json(
    rank: int, c: ScoredCandidate, measured: Mapping[tuple[str, str], Measured] | None = None
) -> dict[str, Any]:
    estimates = c.estimates()
    m = (measured or {}).get((c.name, c.pool.key))
    return {
        "rank": rank,
        "name": c.name,
        "pool": c.pool.key,
        "engine": c.engine,
        "precision": c.precision,
        "tensorParallelSize": c.tensor_parallel_size,
        "nodes": c.nodes,
        "target": c.target,
        "feasible": c.feasible,
        "reason": c.reason,
        "maxModelLen": c.max_model_len or None,
        "estimates": estimates.to_k8s() if estimates else None,
        "measured": None
        if m is None
        else {"concurrency": m.concurrency, "outputTokensPerSecond": m.output_tokens_per_second,
              "ttftP99Ms": m.ttft_p99_ms},
    }  # fmt: skip


def selection_to_json(
    selection: Selection, facts: ModelFacts, measured: Mapping[tuple[str, str], Measured] | None = None
) -> dict[str, Any]:
    """The machine-readable plan (shape documented in docs/plan-json.md)."""
    pool = selection.pool
    return {
        "selected": selection.ok,
        "profile": selection.profile.to_k8s() if selection.profile else None,
        "maxModelLen": selection.max_model_len,
        "estimates": selection.estimates.to_k8s() if selection.estimates else None,
        "pool": None
        if pool is None
        else {
            "key": pool.key,
            "gpuProduct": pool.gpu.display_name if pool.gpu else None,
            "gpusPerNode": pool.gpus_per_node,
            "nodes": list(pool.node_names),
        },
        "deployment": None
        if not selection.ok
        else {
            "gpuRequest": selection.gpu_request,
            "shmSizeBytes": selection.shm_size_bytes,
            "env": selection.env,
            "nodeSelector": selection.node_selector,
            "nodeAffinity": selection.node_affinity,
            "tolerations": list(selection.tolerations),
            "readinessPath": selection.readiness_path,
            "memoryRequestBytes": selection.memory_request_bytes,
        },
        "failure": None
        if selection.failure is None
        else {"message": selection.failure.message, "reasons": list(selection.failure.reasons)},
        "model": facts.to_k8s(),
        "pools": [
            {
                "key": p.key,
                "gpuProduct": p.gpu.display_name if p.gpu else None,
                "gpuShortName": p.gpu.short_name if p.gpu else None,
                "gpuMemoryMiB": p.gpu.memory_mib if p.gpu else None,
                "gpusPerNode": p.gpus_per_node,
                "nodeCount": p.node_count,
                "nodes": list(p.node_names),
            }
            for p in selection.pools
        ],
        "excludedNodes": [{"name": e.name, "reason": e.reason} for e in selection.excluded_nodes],
        "candidates": [_candidate_json(i + 1, c, measured) for i, c in enumerate(selection.candidates)],
    }


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def _print_table(
    selection: Selection,
    facts: ModelFacts,
    show_all: bool,
    measured: Mapping[tuple[str, str], Measured] | None = None,
) -> None:
    from rich.console import Console, JustifyMethod
    from rich.table import Table

    # Full width when piped (a file or CI log has no terminal width to respect).
    console = Console(width=None if sys.stdout.isatty() else 240)
    millions = facts.parameter_count / 1e9
    console.print(
        f"[bold]Model[/bold] {facts.architecture}: {millions:.2f} B parameters, {gib(facts.weight_bytes)} GiB of "
        f"{facts.dtype} weights, {facts.num_layers} layers, {facts.num_attention_heads} heads / "
        f"{facts.num_key_value_heads} KV heads, context {facts.max_position_embeddings}, "
        f"task {selection.profile.task if selection.profile else facts.task}"
    )
    pools = ", ".join(
        f"{p.key} ({p.node_count} node{'s' if p.node_count != 1 else ''})" for p in selection.pools
    )
    console.print(f"[bold]Pools[/bold] {pools or 'none'}")
    for excluded in selection.excluded_nodes:
        console.print(f"  [dim]left out {excluded.name}: {excluded.reason}[/dim]")
    feasible = [c for c in selection.candidates if c.feasible]
    rejected = [c for c in selection.candidates if not c.feasible]
    shown = selection.candidates if show_all else feasible[:DEFAULT_ROWS] + rejected[:DEFAULT_ROWS]
    table = Table(title="Candidates (best first)", show_lines=False, expand=False)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("#", "right"),
        ("profile", "left"),
        ("pool", "left"),
        ("fits", "center"),
        ("weights/GPU GiB", "right"),
        ("KV/GPU GiB", "right"),
        ("context", "right"),
        ("max seqs", "right"),
        *((("measured", "right"),) if measured else ()),
        ("why", "left"),
    )
    for header, justify in columns:
        table.add_column(header, justify=justify, no_wrap=header not in ("why",))
    chosen = selection.chosen
    for c in shown:
        est = c.estimates() if c.feasible else None
        rank = selection.candidates.index(c) + 1
        style = "bold green" if c is chosen else ("" if c.feasible else "dim")
        table.add_row(
            str(rank),
            c.name,
            c.pool.key,
            "yes" if c.feasible else "no",
            gib(c.memory.weight_bytes_per_gpu) if c.memory else "-",
            gib(est.kv_cache_bytes_per_gpu or 0) if est else "-",
            str(c.max_model_len) if c.feasible else "-",
            str(est.max_concurrent_sequences) if est else "-",
            *((_measured_cell((measured or {}).get((c.name, c.pool.key))),) if measured else ()),
            c.reason,
            style=style,
        )
    console.print(table)
    hidden = len(selection.candidates) - len(shown)
    if hidden > 0:
        console.print(
            f"[dim]{hidden} more candidates not shown (--all lists them, -o json gives everything)[/dim]"
        )
    if selection.profile is not None and selection.pool is not None:
        profile = selection.profile
        console.print(
            f"\n[bold green]Selected[/bold green] {profile.name} on pool {selection.pool.key} "
            f"(nodes: {', '.join(selection.pool.node_names)})"
        )
        if profile.nodes > 1:
            console.print(
                f"  spans {profile.nodes} nodes per replica (tp{profile.tensor_parallel_size} in each node x "
                f"pp{profile.nodes} across them): no single node of any pool holds the model; one pod per node, "
                "rank 0 serves the API"
            )
        else:
            considered = any(c.nodes > 1 for c in selection.candidates)
            console.print(
                "  one node per replica"
                + (
                    ""
                    if considered
                    else " (several nodes are considered only when no single node holds the model, or with --nodes-per-replica)"
                )
            )
        console.print(
            f"  GPUs per pod: {selection.gpu_request}   /dev/shm: {selection.shm_size_bytes // GIB} GiB   "
            f"context: {selection.max_model_len} tokens   health: {profile.health_path}   "
            f"metrics: {profile.metrics_path}   port: {profile.port}"
        )
        if selection.node_selector:
            console.print(f"  nodeSelector: {selection.node_selector}")
        console.print("  command: " + " ".join(profile.command), soft_wrap=True)


def _measured_cell(m: Measured | None) -> str:
    if m is None:
        return "-"
    ttft = f", TTFT p99 {m.ttft_p99_ms:.0f} ms" if m.ttft_p99_ms is not None else ""
    return f"{m.output_tokens_per_second:.0f} tok/s @{m.concurrency}{ttft}"


def main(argv: list[str]) -> int:
    """Entry point of `inferator plan`; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        measured: dict[tuple[str, str], Measured] = {}
        if args.model_cache:
            facts, name, cache = _facts_from_cluster(args.model_cache, args.kubeconfig, args.in_cluster)
            measured = _measured_from_cluster(cache, args.measurements_namespace)
        elif args.model:
            facts, name = _facts_from_path(args.model)
        else:
            raise PlanInputError(
                "give a model: a config.json path, a model directory, or --model-cache NS/NAME"
            )
        settings = _settings(args.settings)
        catalog = _catalog(args.catalog)
        spec = _spec(args, name)
        if args.nodes is not None:
            nodes = nodes_from_documents(_load_yaml_documents(args.nodes))
        else:
            nodes = _nodes_from_cluster(args.kubeconfig, args.in_cluster)
    except PlanInputError as exc:
        print(f"inferator plan: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    selection = select_profile(facts, nodes, spec, settings, catalog=catalog,
                               served_model_name=args.served_model_name or name, measured=measured)  # fmt: skip
    if args.output == "json":
        print(json.dumps(selection_to_json(selection, facts, measured), indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(selection_to_json(selection, facts, measured), sort_keys=False), end="")
    else:
        _print_table(selection, facts, args.all, measured)
    if selection.failure is not None:
        print(f"inferator plan: no compatible profile: {selection.failure.message}", file=sys.stderr)
        for reason in _unique(selection.failure.reasons):
            print(f"  - {reason}", file=sys.stderr)
        return EXIT_NOTHING_FITS
    return EXIT_SELECTED
