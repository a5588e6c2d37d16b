"""The inference API paths kvroute understands: the one list the gateway routes and the EPP checks.

``kvroute serve`` generates Envoy routes for exactly these paths (plus operator-named extra
prefixes) and answers 404 to anything else, so a model server's admin API
(``/v1/load_lora_adapter``, ``/reset_prefix_cache``, ``/metrics``) is not reachable through the
gateway. The EPP answers 400 to a request on one of these paths that has no body (an inference
request without a body is never valid; it used to go to a random endpoint unvalidated).
"""

from __future__ import annotations

INFERENCE_PATHS: tuple[str, ...] = (
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/messages",
    "/v1/responses",
    "/v1/embeddings",
)


def is_inference_path(path: str) -> bool:
    """True for one of :data:`INFERENCE_PATHS` (query string and a trailing slash ignored)."""
    bare = path.split("?", 1)[0]
    if len(bare) > 1:
        bare = bare.rstrip("/")
    return bare in INFERENCE_PATHS
