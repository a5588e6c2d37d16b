"""Re-exports the request types from :mod:`kvroute.framework.request`, where they live."""

from kvroute.framework.request import ApiKind, Criticality, InferenceRequest, MediaItem

__all__ = ["ApiKind", "Criticality", "InferenceRequest", "MediaItem"]
