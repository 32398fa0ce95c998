"""config.json resolved the way its architecture resolves it: defaults, nested text/vision configs.

A multimodal config nests the language model under `text_config` and often states only what
differs from the architecture's defaults (Gemma 3's `text_config` may give just `hidden_size`);
many text configs omit fields whose defaults matter (`head_dim`, `tie_word_embeddings`,
`sliding_window`, `layer_types`). Retyping each architecture's defaults here would drift, so
the config goes through transformers' own config class for its `model_type` (configuration
code only: no torch, no weights, no network). Custom architectures transformers does not know
(`trust_remote_code` models) are read as written: every field the accounting needs must then
be present, and a missing one is refused by name rather than guessed.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The library announces at import that it found no torch: true, and irrelevant for configs.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


class UnsupportedModel(ValueError):
    """A config this planner cannot account for; the message names the architecture and the field."""


@dataclass(frozen=True, slots=True)
class ResolvedConfig:
    """The top-level config and its language/vision parts, every default filled in where known.

    resolved_by: "transformers <version>" or "config.json" (a model type transformers does not know).
    """

    top: dict[str, Any]
    text: dict[str, Any]
    vision: dict[str, Any] | None
    architecture: str
    resolved_by: str


def _transformers_config(raw: Mapping[str, Any]) -> tuple[Any, str] | None:
    """transformers' config object for `raw`, or None when the library does not know the model type."""
    model_type = raw.get("model_type")
    if not isinstance(model_type, str):
        return None
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        import transformers
        from transformers import AutoConfig
        from transformers.models.auto.configuration_auto import (  # type: ignore[attr-defined]
            CONFIG_MAPPING_NAMES,
        )
    except ImportError:  # pragma: no cover - a dependency of the package; kept for trimmed images
        return None
    if model_type not in CONFIG_MAPPING_NAMES:
        return None
    kwargs = {k: v for k, v in raw.items() if k not in ("model_type", "transformers_version", "auto_map")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = AutoConfig.for_model(model_type, **kwargs)
    except Exception:
        return None  # read as written, with the same refusals as an unknown type
    return config, f"transformers {transformers.__version__}"


def _as_dict(config: Any) -> dict[str, Any]:
    data: dict[str, Any] = config.to_dict()
    # Values some config classes keep as attributes or properties rather than in to_dict().
    for name in ("head_dim", "layer_types", "layers_block_type", "sliding_window", "moe_layers"):
        if data.get(name) is None:
            try:
                value = getattr(config, name, None)
            except Exception:
                value = None
            if value is not None and not callable(value):
                data[name] = list(value) if isinstance(value, tuple) else value
    return data


def _text_part(top: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for key in ("text_config", "llm_config", "language_config", "thinker_config"):
        value = top.get(key)
        if isinstance(value, Mapping):
            return value
    return None


def _vision_part(top: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for key in ("vision_config", "vision_tower_config", "visual"):
        value = top.get(key)
        if isinstance(value, Mapping):
            return value
    return None


def resolve_config(raw: Mapping[str, Any]) -> ResolvedConfig:
    """Resolve a config.json dict; the text part carries the top level's fields it does not override."""
    architectures = raw.get("architectures")
    architecture = str(architectures[0]) if isinstance(architectures, list) and architectures else ""
    resolved = _transformers_config(raw)
    if resolved is not None:
        config, by = resolved
        top = _as_dict(config)
        text_obj = config.get_text_config() if hasattr(config, "get_text_config") else config
        text = _as_dict(text_obj) if text_obj is not config else top
        vision_obj = getattr(config, "vision_config", None)
        vision = _as_dict(vision_obj) if vision_obj is not None and hasattr(vision_obj, "to_dict") else None
    else:
        by = "config.json"
        top = dict(raw)
        nested = _text_part(raw)
        text = dict(nested) if nested is not None else top
        nested_vision = _vision_part(raw)
        vision = dict(nested_vision) if nested_vision is not None else None
    if text is not top:
        # Fields only the wrapper states (dtype, quantisation, sometimes tie_word_embeddings)
        # apply to the language model too; the text config's own values win.
        merged = {k: v for k, v in raw.items() if not isinstance(v, Mapping)}
        merged.update({k: v for k, v in text.items() if v is not None})
        text = merged
    return ResolvedConfig(
        top=top,
        text=text,
        vision=vision,
        architecture=architecture or str(raw.get("model_type") or "unknown"),
        resolved_by=by,
    )


def first(config: Mapping[str, Any], *keys: str) -> Any:
    """The first key present with a non-null value."""
    for key in keys:
        value = config.get(key)
        if value is not None:
            return value
    return None


def require_int(config: Mapping[str, Any], architecture: str, *keys: str) -> int:
    """An integer field under any of `keys`, or UnsupportedModel naming the field."""
    value = first(config, *keys)
    if value is None:
        raise UnsupportedModel(
            f"{architecture}: config.json has no {' / '.join(keys)} for the language model, and the "
            "architecture's config class does not define it; cannot size this model"
        )
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise UnsupportedModel(
            f"{architecture}: config.json field {keys[0]} is {value!r}, not a number"
        ) from exc
