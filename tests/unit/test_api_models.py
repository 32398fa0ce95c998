"""The pydantic models read what users write and what the API server returns."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from inferator.api import InferenceServiceSpec, ModelCacheSpec
from inferator.api.common import Condition
from inferator.api.conditions import set_condition

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"ModelCache": ModelCacheSpec, "InferenceService": InferenceServiceSpec}


EXAMPLES = sorted([*(ROOT / "examples").glob("*.yaml"), *(ROOT / "examples" / "rag").glob("*.yaml")])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.relative_to(ROOT / "examples").as_posix())
def test_examples_parse(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        MODELS[doc["kind"]].model_validate(doc["spec"])


def test_defaults_fill_a_minimal_cache() -> None:
    spec = ModelCacheSpec.model_validate({"source": {"uri": "hf://org/model"}})
    assert spec.ownership.run_as_user == 1000
    assert spec.storage.reclaim_policy == "Retain"
    assert spec.to_k8s()["source"] == {"uri": "hf://org/model", "include": [], "exclude": []}


def test_unknown_field_is_refused_with_its_name() -> None:
    with pytest.raises(ValidationError, match="sourec"):
        ModelCacheSpec.model_validate({"source": {"uri": "hf://org/model"}, "sourec": {}})


def test_condition_transition_time_moves_only_on_status_change() -> None:
    first = set_condition([], "Ready", "False", "A", "a", now="t1")
    same = set_condition(first, "Ready", "False", "B", "b", now="t2")
    flipped = set_condition(same, "Ready", "True", "C", "c", now="t3")
    assert same[0].last_transition_time == "t1" and same[0].reason == "B"
    assert flipped[0].last_transition_time == "t3"
    assert [c.type for c in set_condition(flipped, "CacheReady", "True", "R", "", now="t4")] == [
        "Ready",
        "CacheReady",
    ]
    assert isinstance(flipped[0], Condition)
