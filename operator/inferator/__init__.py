"""Inferator: a Kubernetes operator for private LLM inference."""

__version__ = "0.1.0"
