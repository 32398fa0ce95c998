"""The documentation agrees with the code: links resolve, names and tables match their sources."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from inferator.api.crds import KINDS
from inferator.api.inferenceservice import InferenceServicePhase, InferenceServiceSpec, ScalingSignal
from inferator.api.modelcache import ModelCachePhase, ModelFacts
from inferator.argocd import argocd_cm_data
from inferator.profiles.catalog import GPU_RESOURCE, PRODUCT_LABEL
from inferator.profiles.pools import CPU_POOL_KEY, gpu_pools
from inferator.profiles.select import select_profile
from inferator.render.inferenceservice import ENGINE_SIGNALS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONTROLLERS = ROOT / "operator" / "inferator" / "controllers"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
# Links that deliberately leave the repository. README points contributors at the shared design
# brief next to the checkout; drop the entry when it stops doing so.
LINKS_OUTSIDE_REPO = {("README.md", "../shared/DESIGN.md")}

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose(text: str) -> str:
    """Markdown without fenced code blocks and code spans (links there are not links)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def links(text: str) -> list[str]:
    body = prose(text)
    return _INLINE_LINK.findall(body) + _REFERENCE_LINK.findall(body)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for line in _FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table as rows of cells, the separator row dropped."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*_FENCE.sub("", text).splitlines(), ""]:
        if line.lstrip().startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def table_after(text: str, marker: str) -> list[list[str]]:
    """The first table after an HTML comment marker such as `<!-- phases: ModelCache -->`."""
    position = text.index(f"<!-- {marker} -->")
    return tables(text[position:])[0]


def table_with_header(text: str, first_header: str) -> list[list[str]]:
    matches = [t for t in tables(text) if t[0][0].lower() == first_header.lower()]
    assert len(matches) == 1, f"expected one table headed {first_header!r}, found {len(matches)}"
    return matches[0]


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in links(page.read_text()):
        if _SCHEME.match(target):
            continue
        path_part, _, fragment = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        name = str(page.relative_to(ROOT))
        if ROOT not in resolved.parents and resolved != ROOT:
            if (name, target) not in LINKS_OUTSIDE_REPO:
                broken.append(f"{target}: leaves the repository")
            continue
        if not resolved.exists():
            broken.append(f"{target}: {resolved.relative_to(ROOT)} does not exist")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading #{fragment} in {resolved.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_docs_pages_exist() -> None:
    pages = {p.name for p in DOCS.glob("*.md")}
    for name in ("concepts.md", "profile-selection.md", "modelcache.md", "autoscaling.md", "gitops.md",
                 "troubleshooting.md", "operations.md", "kind.md", "plan-json.md"):  # fmt: skip
        assert name in pages


# --- condition reasons -------------------------------------------------------------------------


def _constants(node: ast.AST) -> set[str]:
    """String literals an expression can evaluate to (constants and both branches of `a if c else b`)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _constants(node.body) | _constants(node.orelse)
    return set()


def controller_reasons() -> set[str]:
    """Reasons the controllers set: `conds.set(type, status, REASON, ...)`, `Outcome(phase, ready, REASON, ...)`,
    `{"reason": REASON}` (the readiness-gate condition) and values assigned to `*_reason` variables."""
    reasons: set[str] = set()
    for path in CONTROLLERS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in ("set", "Outcome") and len(node.args) >= 3:
                    reasons |= _constants(node.args[2])
                if name == "set_condition" and len(node.args) >= 4:
                    reasons |= _constants(node.args[3])
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "reason":
                        reasons |= _constants(value)
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id.endswith("reason") for t in node.targets
            ):
                reasons |= _constants(node.value)
    return reasons


def documented_reasons() -> set[str]:
    reasons: set[str] = set()
    for table in tables((DOCS / "concepts.md").read_text()):
        header = [cell.lower() for cell in table[0]]
        if "reason" in header:
            column = header.index("reason")
            for row in table[1:]:
                reasons.update(ticked(row[column]))
    return reasons


def controller_string_literals() -> set[str]:
    literals = set()
    for path in CONTROLLERS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                literals.add(node.value)
    return literals


def test_every_documented_reason_is_set_by_a_controller() -> None:
    documented = documented_reasons()
    assert len(documented) > 20, "concepts.md lost its reason tables"
    unknown = documented - controller_string_literals()
    assert not unknown, f"docs/concepts.md names reasons no controller uses: {sorted(unknown)}"


def test_every_reason_a_controller_sets_is_documented() -> None:
    found = controller_reasons()
    assert {"Serving", "Prefetched", "WarmupFailed", "WaitingForCache"} <= found, "the AST scan lost track"
    missing = found - documented_reasons()
    assert not missing, f"add these reasons to the tables in docs/concepts.md: {sorted(missing)}"


@pytest.mark.parametrize(
    ("kind", "phases"),
    [("ModelCache", ModelCachePhase), ("InferenceService", InferenceServicePhase)],
)
def test_phase_tables_list_exactly_the_api_phases(kind: str, phases: Any) -> None:
    table = table_after((DOCS / "concepts.md").read_text(), f"phases: {kind}")
    documented = [token for row in table[1:] for token in ticked(row[0])]
    assert sorted(documented) == sorted(get_args(phases))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_printer_column_tables_match_the_crds(kind: Any) -> None:
    table = table_after((DOCS / "concepts.md").read_text(), f"printer-columns: {kind.kind}")
    documented = [(ticked(row[0])[0], "wide" in row[2]) for row in table[1:]]
    expected = [(column["name"], column.get("priority", 0) > 0) for column in kind.printer_columns]
    assert documented == expected


# --- operations, autoscaling, gitops -----------------------------------------------------------


def test_metrics_table_lists_exactly_the_operators_metrics() -> None:
    source = (CONTROLLERS / "metrics.py").read_text()
    defined = set(re.findall(r"\"(inferator_[a-z0-9_]+)\"", source))
    table = table_with_header((DOCS / "operations.md").read_text(), "metric")
    documented = {token for row in table[1:] for token in ticked(row[0])}
    assert documented == defined


def _rbac_rules() -> list[dict[str, Any]]:
    """The ClusterRole's rules as `helm template` renders them (watching every namespace)."""
    from tests.unit.test_chart import rendered

    role = next(d for d in rendered() if d["kind"] == "ClusterRole")
    rules: list[dict[str, Any]] = role["rules"]
    return rules


def test_rbac_table_matches_the_chart() -> None:
    def key(groups: list[str], resources: list[str], verbs: list[str]) -> tuple[frozenset[str], ...]:
        return frozenset(groups), frozenset(resources), frozenset(verbs)

    chart = {key(r["apiGroups"], r["resources"], r["verbs"]) for r in _rbac_rules()}
    table = table_with_header((DOCS / "operations.md").read_text(), "API group")
    documented = set()
    for row in table[1:]:
        groups = ["" if g.strip() == "core" else g.strip().strip("`") for g in row[0].split(",")]
        verbs = [v.strip() for v in row[2].split(",")]
        documented.add(key(groups, ticked(row[1]), verbs))
    assert documented == chart


def test_autoscaling_table_matches_the_engine_signals() -> None:
    table = table_with_header((DOCS / "autoscaling.md").read_text(), "signal")
    signals = [ticked(row[0])[0] for row in table[1:]]
    assert sorted(signals) == sorted(get_args(ScalingSignal))
    documented = {token for row in table[1:] for cell in row[1:] for token in ticked(cell) if ":" in token}
    mapped = {metric for signals_of in ENGINE_SIGNALS.values() for metric in signals_of.values()}
    assert documented == mapped


def test_argocd_cm_patch_is_generated_from_the_lua() -> None:
    patch = yaml.safe_load((ROOT / "examples" / "argocd" / "argocd-cm-patch.yaml").read_text())
    assert patch["kind"] == "ConfigMap"
    assert patch["metadata"]["name"] == "argocd-cm"
    assert patch["data"] == argocd_cm_data(), "regenerate examples/argocd/argocd-cm-patch.yaml"
    gitops = (DOCS / "gitops.md").read_text()
    for key in argocd_cm_data():
        assert key in gitops


def test_argocd_application_syncs_only_the_example_crs() -> None:
    app = yaml.safe_load((ROOT / "examples" / "argocd" / "application.yaml").read_text())
    source = app["spec"]["source"]
    assert source["path"] == "examples"
    assert source["directory"]["recurse"] is False
    synced = sorted((ROOT / "examples").glob(source["directory"]["include"]))
    assert synced, "the include pattern matches no example"
    for path in synced:
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] == "inferator.dev/v1alpha1", path


# --- kind-config.yaml --------------------------------------------------------------------------


def kind_nodes() -> list[dict[str, Any]]:
    """Node objects as kind would register them from kind-config.yaml (kubeadm taints the control plane)."""
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    nodes = []
    workers = 0
    for entry in config["nodes"]:
        role = entry["role"]
        if role == "worker":
            workers += 1
        name = f"inferator-{role}{workers if role == 'worker' and workers > 1 else ''}"
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
        labels |= {k: str(v) for k, v in (entry.get("labels") or {}).items()}
        taints = []
        if role == "control-plane":
            labels["node-role.kubernetes.io/control-plane"] = ""
            taints.append({"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"})
        nodes.append({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints} if taints else {},
            "status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}},
            "role": role,
        })  # fmt: skip
    return nodes


def test_kind_config_has_one_control_plane_and_two_workers() -> None:
    roles = sorted(node["role"] for node in kind_nodes())
    assert roles == ["control-plane", "worker", "worker"]


def test_kind_workers_form_the_cpu_pool_and_the_control_plane_is_left_out() -> None:
    nodes = kind_nodes()
    workers = sorted(n["metadata"]["name"] for n in nodes if n["role"] == "worker")
    for node in nodes:
        assert not any(k.startswith("nvidia.com/") for k in node["metadata"]["labels"])
        assert GPU_RESOURCE not in node["status"]["allocatable"]
    scan = gpu_pools(nodes)
    assert [(p.key, sorted(p.node_names)) for p in scan.pools] == [(CPU_POOL_KEY, workers)]
    assert [e.name for e in scan.excluded] == ["inferator-control-plane"]
    assert "node-role.kubernetes.io/control-plane" in scan.excluded[0].reason


def test_kind_workers_get_a_vllm_cpu_profile_through_their_label() -> None:
    nodes = kind_nodes()
    worker_labels = [n["metadata"]["labels"] for n in nodes if n["role"] == "worker"]
    shared = {k: v for k, v in worker_labels[0].items() if k.startswith("inferator.dev/")}
    assert shared and all(shared.items() <= labels.items() for labels in worker_labels)
    tiny = ModelFacts(
        architecture="LlamaForCausalLM", num_layers=2, hidden_size=256, intermediate_size=512,
        num_attention_heads=4, num_key_value_heads=4, head_dim=64, max_position_embeddings=2048,
        vocab_size=1000, dtype="bfloat16", parameter_count=2_000_000, weight_bytes=4_000_000,
    )  # fmt: skip
    spec = InferenceServiceSpec.model_validate(
        {"modelCacheRef": {"name": "tiny"}, "scheduling": {"nodeSelector": shared}}
    )
    selection = select_profile(tiny, nodes, spec)
    assert selection.profile is not None, selection.message
    assert selection.profile.engine == "vllm-cpu"
    assert selection.profile.name.startswith("vllm-cpu-cpu-")
    assert selection.gpu_request == 0
    terms = selection.node_affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": PRODUCT_LABEL, "operator": "DoesNotExist"}]}]
