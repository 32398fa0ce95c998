"""Children are re-applied only when a field we set differs: the basis of zero writes at rest."""

from __future__ import annotations

import pytest

from inferator.controllers.children import event_needs_owner_reconcile, is_subset


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
    ("event", "child", "owner_status", "needed"),
    [
        # the controller's status writes that change nothing the owner reports: skip
        ("MODIFIED", deployment([OURS, CONTROLLER_STATUS], replicas=1, readyReplicas=1, **AVAILABLE),
         {"replicas": 1, "readyReplicas": 1, **AVAILABLE}, False),
        # a replica became ready: the owner's status must follow
        ("MODIFIED", deployment([OURS, CONTROLLER_STATUS], replicas=1, readyReplicas=1, **AVAILABLE),
         {"replicas": 1, "readyReplicas": 0}, True),
        # a hand edit after our apply (or in the same second): undo it
        ("MODIFIED", deployment([OURS, {"manager": "kubectl-edit", "operation": "Update", "time": OURS["time"]}]),
         {"replicas": 0, "readyReplicas": 0}, True),
        # a child we never wrote (adopted, or written by an older operator)
        ("MODIFIED", deployment([{"manager": "helm", "operation": "Update", "time": OURS["time"]}]), {}, True),
        ("DELETED", deployment([OURS]), {"replicas": 0, "readyReplicas": 0}, True),
        # a Service only matters when someone else touched it
        ("MODIFIED", {"kind": "Service", "metadata": {"managedFields": [OURS]}}, {}, False),
    ],
)  # fmt: skip
def test_child_events_that_need_the_owner_reconciled(
    event: str, child: dict[str, object], owner_status: dict[str, object], needed: bool
) -> None:
    assert event_needs_owner_reconcile(event, child, owner_status) is needed
