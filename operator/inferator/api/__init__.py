"""The API of Inferator: pydantic models of every custom resource, and CRD generation from them."""

from inferator.api.common import API_GROUP, API_VERSION, Condition
from inferator.api.inferenceservice import InferenceServiceSpec, InferenceServiceStatus
from inferator.api.modelcache import ModelCacheSpec, ModelCacheStatus, ModelFacts

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "Condition",
    "InferenceServiceSpec",
    "InferenceServiceStatus",
    "ModelCacheSpec",
    "ModelCacheStatus",
    "ModelFacts",
]
