"""Pure functions from (spec, selection, settings) to Kubernetes manifests, via jinja2 templates."""
