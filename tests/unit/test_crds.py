"""The CRDs in crds/ and the chart are generated from the pydantic models and must not drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from inferator.api.crds import KINDS, crd, render_all

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("directory", ["crds", "charts/inferator/crds"])
def test_committed_crds_match_the_models(directory: str) -> None:
    for name, text in render_all().items():
        path = ROOT / directory / name
        assert path.exists(), f"{path} missing: run `inferator crds`"
        assert path.read_text() == text, f"{path} drifted from operator/inferator/api: run `inferator crds`"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        if "type" in node or "x-kubernetes-int-or-string" in node or "properties" in node:
            found.append((path, node))
        for key, value in node.get("properties", {}).items():
            found += _walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            found += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind: Any) -> None:
    schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(schema)
    for forbidden in ("$ref", "anyOf", "allOf", "oneOf", "title:", "$defs", "const:"):
        assert forbidden not in text, f"{kind.kind} schema contains {forbidden}"
    for path, node in _walk(schema):
        typed = "type" in node or node.get("x-kubernetes-int-or-string")
        assert typed, f"{kind.kind}{path} has no type"
        if node.get("type") == "object" and "properties" in node:
            assert "additionalProperties" not in node, (
                f"{kind.kind}{path}: properties with additionalProperties"
            )


def test_inferenceservice_has_scale_subresource_and_columns() -> None:
    version = crd(next(k for k in KINDS if k.kind == "InferenceService"))["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert {"Phase", "Profile", "Ready", "Age"} <= set(names)


def test_defaults_are_in_the_schema() -> None:
    spec = crd(next(k for k in KINDS if k.kind == "ModelCache"))["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"
    ]["properties"]["spec"]
    ownership = spec["properties"]["ownership"]
    assert ownership["default"] == {}
    assert ownership["properties"]["runAsUser"]["default"] == 1000
    assert spec["properties"]["storage"]["properties"]["reclaimPolicy"]["default"] == "Retain"
