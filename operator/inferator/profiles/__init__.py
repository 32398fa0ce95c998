"""Profile selection: GPU catalog, GPU pools, model facts, memory math, candidates, ranking, engine argv.

The operator calls `select_profile(facts, nodes, spec, settings)`; `inferator plan` calls the
same function offline. Everything here is pure except `plan.py`'s I/O edges.
"""

from inferator.profiles.catalog import BUILTIN_CATALOG, GpuSpec, catalog_from_config, normalise_product
from inferator.profiles.model_facts import facts_from_config, facts_from_directory, read_safetensors_header
from inferator.profiles.pools import GpuPool, PoolScan, gpu_pools
from inferator.profiles.select import (
    NoCompatibleProfile,
    ScoredCandidate,
    Selection,
    pools_for_spec,
    select_profile,
)
from inferator.profiles.settings import SelectionSettings

__all__ = [
    "BUILTIN_CATALOG",
    "GpuPool",
    "GpuSpec",
    "NoCompatibleProfile",
    "PoolScan",
    "ScoredCandidate",
    "Selection",
    "SelectionSettings",
    "catalog_from_config",
    "facts_from_config",
    "facts_from_directory",
    "gpu_pools",
    "normalise_product",
    "pools_for_spec",
    "read_safetensors_header",
    "select_profile",
]
