"""Children are re-applied only when a field we set differs: the basis of zero writes at rest."""

from __future__ import annotations

import pytest

from inferator.controllers.children import is_subset


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
