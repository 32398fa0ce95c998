"""Children are re-applied only when a field we set differs: the basis of zero writes at rest."""

from __future__ import annotations

import pytest

from inferator.controllers.children import changed_by_others, deployment_differs, is_subset


@pytest.mark.parametrize(
    ("desired", "live", "same"),
    [
        ({"a": 1}, {"a": 1, "b": 2}, True),  # the API server adds defaults
        ({"a": 1}, {"a": 2}, False),
        ({"egress": []}, {}, True),  # empty collections read back as absent
        ({"egress": [{}]}, {}, False),
        ({"l": [1, 2]}, {"l": [1, 2, 3]}, False),  # lists are compared whole
        ({"l": [{"n": "x"}]}, {"l": [{"n": "x", "default": True}]}, True),
        ({"gpu": 8}, {"gpu": "8"}, True),  # quantities come back as strings
        ({"m": {"k": "v"}}, {"m": None}, False),
    ],
)
def test_is_subset(desired: object, live: object, same: bool) -> None:
    assert is_subset(desired, live) is same


def deployment(fields: list[dict[str, str]], **status: object) -> dict[str, object]:
    return {"kind": "Deployment", "metadata": {"managedFields": fields}, "status": status}


OURS = {"manager": "inferator", "operation": "Apply", "time": "2026-11-23T10:00:00Z"}
CONTROLLER_STATUS = {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status",
                     "time": "2026-11-23T10:00:05Z"}  # fmt: skip
AVAILABLE = {"conditions": [{"type": "Available", "status": "True"}]}


@pytest.mark.parametrize(
    ("event", "child", "changed"),
    [
        # the controller's status writes are not a change to undo
        ("MODIFIED", deployment([OURS, CONTROLLER_STATUS], replicas=1, readyReplicas=1, **AVAILABLE), False),
        # a hand edit after our apply (or in the same second): undo it
        ("MODIFIED", deployment([OURS, {"manager": "kubectl-edit", "operation": "Update", "time": OURS["time"]}]), True),
        # a child we never wrote (adopted, or written by an older operator)
        ("MODIFIED", deployment([{"manager": "helm", "operation": "Update", "time": OURS["time"]}]), True),
        ("DELETED", deployment([OURS]), True),
        # our own apply of a Service coming back
        ("MODIFIED", {"kind": "Service", "metadata": {"managedFields": [OURS]}}, False),
    ],
)  # fmt: skip
def test_child_events_changed_by_others(event: str, child: dict[str, object], changed: bool) -> None:
    assert changed_by_others(event, child) is changed


@pytest.mark.parametrize(
    ("child", "owner_status", "differs"),
    [
        # what the owner reports already: skip
        (deployment([OURS, CONTROLLER_STATUS], replicas=1, readyReplicas=1, **AVAILABLE),
         {"replicas": 1, "readyReplicas": 1, **AVAILABLE}, False),
        # a replica became ready: the owner's status must follow
        (deployment([OURS, CONTROLLER_STATUS], replicas=1, readyReplicas=1, **AVAILABLE),
         {"replicas": 1, "readyReplicas": 0}, True),
        # became Available with the same counts
        (deployment([OURS], **AVAILABLE), {"replicas": 0, "readyReplicas": 0}, True),
    ],
)  # fmt: skip
def test_deployment_events_differing_from_the_owners_status(
    child: dict[str, object], owner_status: dict[str, object], differs: bool
) -> None:
    assert deployment_differs(child, owner_status) is differs
