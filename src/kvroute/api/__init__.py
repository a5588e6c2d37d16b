"""Kubernetes-shaped resource types (pydantic), and the registry of (apiVersion, kind) pairs.

Import the types from here; :data:`RESOURCE_KINDS` is how loaders dispatch a document.
"""

from __future__ import annotations

from kvroute.api.inferencemodel import InferenceModel, TargetModel
from kvroute.api.inferencemodelrewrite import InferenceModelRewrite, RewriteRule, RewriteTarget
from kvroute.api.inferenceobjective import (
    ALPHA_API_VERSIONS,
    LEGACY_ALPHA_API_VERSION,
    LLM_D_ALPHA_API_VERSION,
    InferenceObjective,
)
from kvroute.api.inferencepool import (
    V1_API_VERSION,
    V1ALPHA2_API_VERSION,
    InferencePoolV1,
    InferencePoolV1Alpha2,
    PoolView,
)
from kvroute.api.meta import KubeModel, ObjectMeta

__all__ = [
    "ALPHA_API_VERSIONS",
    "LEGACY_ALPHA_API_VERSION",
    "LLM_D_ALPHA_API_VERSION",
    "RESOURCE_KINDS",
    "V1ALPHA2_API_VERSION",
    "V1_API_VERSION",
    "InferenceModel",
    "InferenceModelRewrite",
    "InferenceObjective",
    "InferencePool",
    "InferencePoolV1",
    "InferencePoolV1Alpha2",
    "KubeModel",
    "ObjectMeta",
    "PoolView",
    "Resource",
    "RewriteRule",
    "RewriteTarget",
    "TargetModel",
]

InferencePool = InferencePoolV1 | InferencePoolV1Alpha2
Resource = (
    InferencePoolV1
    | InferencePoolV1Alpha2
    | InferenceModel
    | InferenceObjective
    | (InferenceModelRewrite)
)

RESOURCE_KINDS: dict[tuple[str, str], type[KubeModel]] = {
    (V1_API_VERSION, "InferencePool"): InferencePoolV1,
    (V1ALPHA2_API_VERSION, "InferencePool"): InferencePoolV1Alpha2,
    (V1ALPHA2_API_VERSION, "InferenceModel"): InferenceModel,
    **{(v, "InferenceObjective"): InferenceObjective for v in ALPHA_API_VERSIONS},
    **{(v, "InferenceModelRewrite"): InferenceModelRewrite for v in ALPHA_API_VERSIONS},
}
