"""jinja2 with StrictUndefined: templates a platform engineer can read and diff, parsed after rendering."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import jinja2
import yaml

# libyaml's safe loader when PyYAML was built with it (the wheels are): the pure-Python one was
# a quarter of the operator's CPU in a burst of renders.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("inferator.render", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 (YAML, not HTML; values go through the tojson filter)
        keep_trailing_newline=True,
        # The templates ship inside the package and never change under a running operator:
        # without this, every render stats each template file to see whether to reload it.
        auto_reload=False,
    )
    # JSON is valid YAML: every value lands quoted and escaped, never concatenated.
    env.filters["tojson"] = lambda value: json.dumps(value, sort_keys=False)
    env.filters["combine"] = lambda left, right: {**left, **right}
    return env


@cache
def _template(name: str) -> jinja2.Template:
    # jinja's own template cache takes a lock and checks its LRU order on every lookup.
    return _environment().get_template(name)


def render_manifests(template: str, **context: Any) -> list[dict[str, Any]]:
    """Render a template and parse it into the objects it holds (empty documents dropped)."""
    text = _template(template).render(**context)
    return [doc for doc in yaml.load_all(text, Loader=_LOADER) if doc]


def render_manifest(template: str, **context: Any) -> dict[str, Any]:
    docs = render_manifests(template, **context)
    if len(docs) != 1:
        raise ValueError(f"{template} rendered {len(docs)} objects, expected one")
    return docs[0]
