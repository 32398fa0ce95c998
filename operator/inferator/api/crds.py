"""Generate the CustomResourceDefinitions from the pydantic models.

Kubernetes wants *structural* OpenAPI v3: every node typed, no `$ref`, no `anyOf` as a type,
`nullable` instead of a null branch, booleans for exclusive bounds. pydantic emits JSON Schema
2020-12, so this module translates one into the other and adds what only Kubernetes knows
(subresources, printer columns, short names).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from inferator.api.common import API_GROUP, API_VERSION
from inferator.api.inferencegateway import InferenceGatewaySpec, InferenceGatewayStatus
from inferator.api.inferenceservice import InferenceServiceSpec, InferenceServiceStatus
from inferator.api.modelcache import ModelCacheSpec, ModelCacheStatus

_DROP_KEYS = {"title", "$defs", "discriminator"}


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    printer_columns: tuple[dict[str, Any], ...]
    scale: bool = False
    categories: tuple[str, ...] = field(default=("inferator",))
    # CEL rules on the whole object (the only place a CRD can constrain metadata.name).
    object_rules: tuple[dict[str, str], ...] = ()


# The service's name is its Service's name (a DNS-1035 label) and a label value on every child
# and pod (63 characters): a name the children cannot carry is refused at apply time rather
# than failing every reconcile.
SERVICE_NAME_RULE = {
    "rule": "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
    "message": "metadata.name must be at most 63 characters of lower-case letters, digits and '-', "
    "starting with a letter and ending with a letter or digit (a DNS-1035 label): it names the "
    "InferenceService's Service and labels its pods",
}


def _ready_column() -> dict[str, Any]:
    return {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}


KINDS: tuple[Kind, ...] = (
    Kind(
        kind="ModelCache",
        plural="modelcaches",
        singular="modelcache",
        short_names=("mcache",),
        spec=ModelCacheSpec,
        status=ModelCacheStatus,
        printer_columns=(
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Source", "type": "string", "jsonPath": ".spec.source.uri"},
            _ready_column(),
            {"name": "Done", "type": "integer", "jsonPath": ".status.progress.bytesDone", "priority": 1},
            {"name": "Total", "type": "integer", "jsonPath": ".status.progress.bytesTotal", "priority": 1},
            {"name": "PVC", "type": "string", "jsonPath": ".status.pvcName", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    ),
    Kind(
        kind="InferenceService",
        plural="inferenceservices",
        singular="inferenceservice",
        short_names=("infsvc",),
        spec=InferenceServiceSpec,
        status=InferenceServiceStatus,
        printer_columns=(
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Profile", "type": "string", "jsonPath": ".status.profile"},
            {"name": "Task", "type": "string", "jsonPath": ".status.task"},
            _ready_column(),
            {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas", "priority": 1},
            {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
        scale=True,
        object_rules=(SERVICE_NAME_RULE,),
    ),
    Kind(
        kind="InferenceGateway",
        plural="inferencegateways",
        singular="inferencegateway",
        short_names=("infgw",),
        spec=InferenceGatewaySpec,
        status=InferenceGatewayStatus,
        printer_columns=(
            _ready_column(),
            {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas", "priority": 1},
            {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
        object_rules=(
            {
                **SERVICE_NAME_RULE,
                "message": SERVICE_NAME_RULE["message"].replace("InferenceService", "InferenceGateway"),
            },
            {
                "rule": "self.spec.keys.all(k, self.spec.keys.exists_one(j, j.id == k.id))",
                "message": "spec.keys: every id must be unique (the audit log and quotas tell keys apart by id)",
            },
        ),
    ),
)


def _resolve_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return _resolve_refs(merged, defs)
        return {k: _resolve_refs(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_refs(v, defs) for v in node]
    return node


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """Translate one resolved JSON Schema node into a structural OpenAPI v3 node."""
    node = {k: v for k, v in node.items() if k not in _DROP_KEYS}
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        types = sorted(b.get("type", "") for b in branches)
        if types == ["integer", "string"]:
            node["x-kubernetes-int-or-string"] = True
        elif len(branches) == 1:
            inner = _structural(branches[0])
            node = {**inner, **node}
        else:
            raise ValueError(f"cannot express anyOf {branches} structurally")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[plain] = node[bound]
            node[bound] = True
    if node.get("default") is None:
        node.pop("default", None)
    if node.get("type") == "object" or "properties" in node:
        node["type"] = "object"
        props = node.get("properties")
        if props is not None:
            node["properties"] = {k: _structural(v) for k, v in props.items()}
            node.pop("additionalProperties", None)
        elif isinstance(node.get("additionalProperties"), dict):
            node["additionalProperties"] = _structural(node["additionalProperties"])
        else:
            node.pop("additionalProperties", None)
            node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        node["items"] = _structural(node["items"])
    node.pop("uniqueItems", None)
    return node


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of a pydantic model, as the API server wants it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    return _structural(_resolve_refs(raw, defs))


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition for one kind."""
    spec_schema = openapi_schema(kind.spec)
    status_schema = openapi_schema(kind.status)
    subresources: dict[str, Any] = {"status": {}}
    if kind.scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": list(kind.categories),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                            **(
                                {"x-kubernetes-validations": list(kind.object_rules)}
                                if kind.object_rules
                                else {}
                            ),
                        }
                    },
                    "subresources": subresources,
                    "additionalPrinterColumns": list(kind.printer_columns),
                }
            ],
        },
    }


def render_all() -> dict[str, str]:
    """File name -> YAML text for every CRD, deterministic so drift is a plain string compare."""
    header = "# Generated by `inferator crds` from operator/inferator/api; do not edit.\n"
    return {
        f"{API_GROUP}_{k.plural}.yaml": header + yaml.safe_dump(crd(k), sort_keys=False, width=120)
        for k in KINDS
    }


def write_all(directories: list[Path]) -> list[Path]:
    written = []
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in render_all().items():
            path = directory / name
            path.write_text(text)
            written.append(path)
    return written
