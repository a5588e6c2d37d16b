"""``token-producer``'s ``vllm`` backend: engine token ids from a vLLM render service.

Upstream (llm-d-router v0.10, ``dataproducer/tokenizer/vllm_http.go``) POSTs the request body,
with ``model`` set to ``modelName``, to ``{vllm.url}/v1/completions/render`` (completions; the
answer is a list of ``{"token_ids": [...]}``, one per prompt) or
``{vllm.url}/v1/chat/completions/render`` (chat; one ``{"token_ids": [...]}``), both served by
``vllm serve`` and by the GPU-less ``vllm launch render``. Parameters: ``modelName`` (required),
``vllm.url`` (``http://localhost:8000``), ``vllm.timeout`` (5s), ``vllm.mmTimeout`` (30s, for a
chat request with content-part lists).

Here the call is the token producer's ``prefetch`` hook: the director runs it in a worker thread
before the (synchronous) scheduling cycle, and ``approx-prefix-cache-producer`` hashes the ids
it returns (level 2: blocks of token ids, as upstream's approximate hashing on tokens). Requests
of other APIs, and any failure (unreachable, timeout, non-2xx, a body without ``token_ids``),
fall back to the estimate (the producer's character blocks); failures are counted on the plugin
(``failures``) and logged at WARNING, at most once per 30 s. One pooled keep-alive ``httpx``
client serves every worker thread; it is closed with the plugin (``aclose``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from pydantic import Field, field_validator

from kvroute.config.duration import parse_go_duration
from kvroute.framework.request import ApiKind, openai_shape
from kvroute.plugins.base import TypedName
from kvroute.scheduling.plugins.params import PluginParams
from kvroute.scheduling.request import InferenceRequest

__all__ = ["RenderTokenProducer", "VllmParams"]

log = logging.getLogger(__name__)

COMPLETIONS_RENDER = "/v1/completions/render"
CHAT_RENDER = "/v1/chat/completions/render"
_LOG_EVERY_S = 30.0


class VllmParams(PluginParams):
    """``token-producer`` ``vllm``: where the render service is and how long to wait."""

    url: str = "http://localhost:8000"
    timeout: float = 5.0
    mm_timeout: float = Field(default=30.0, alias="mmTimeout")

    @field_validator("timeout", "mm_timeout", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        seconds = parse_go_duration(value)
        if seconds <= 0:
            raise ValueError("must be a positive duration")
        return seconds

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith("http://"):
            raise ValueError("must be an http:// URL (TLS is not supported, as upstream)")
        return value.rstrip("/")


def _has_parts(body: Mapping[str, Any]) -> bool:
    messages = body.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, Mapping) and isinstance(m.get("content"), list) and m["content"]
        for m in messages
    )


def _ids(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(type(t) is int and t >= 0 for t in value):
        return value
    return None


class RenderTokenProducer:
    """``token-producer`` with the ``vllm`` backend (a :class:`~kvroute.framework.hooks.
    Prefetch` plugin); see the module docstring."""

    def __init__(self, name: str, type_name: str, model_name: str, params: VllmParams) -> None:
        self.typed_name = TypedName(type_name, name)
        self.model_name = model_name
        self.params = params
        self.failures = 0
        self.rendered = 0
        self._logged_at = -_LOG_EVERY_S
        self._client: httpx.Client | None = None

    def prefetch(self, request: InferenceRequest) -> Sequence[int] | None:
        api = openai_shape(request.api)
        if api is ApiKind.CHAT_COMPLETIONS:
            path, timeout = CHAT_RENDER, self.params.timeout
            if _has_parts(request.body):
                timeout = self.params.mm_timeout
        elif api is ApiKind.COMPLETIONS:
            path, timeout = COMPLETIONS_RENDER, self.params.timeout
        else:
            return None  # upstream renders completions and chat only
        body = {**request.body, "model": self.model_name}  # render wants the base model
        try:
            answer = self._post(path, body, timeout)
        except (OSError, ValueError) as exc:  # unreachable, timeout, non-2xx, bad JSON
            self._failed(f"{path}: {exc}")
            return None
        if path == COMPLETIONS_RENDER and isinstance(answer, list) and answer:
            answer = answer[0]  # one entry per prompt; a single prompt is what routing hashes
        ids = _ids(answer.get("token_ids")) if isinstance(answer, Mapping) else None
        if ids is None:
            self._failed(f"{path}: no token_ids in the answer")
            return None
        self.rendered += 1
        return ids

    def _post(self, path: str, body: Mapping[str, Any], timeout: float) -> Any:
        if self._client is None:  # one pooled keep-alive client, shared by the worker threads
            self._client = httpx.Client(
                base_url=self.params.url,
                limits=httpx.Limits(max_keepalive_connections=16),
                headers={"content-type": "application/json"},
            )
        try:
            resp = self._client.post(path, content=json.dumps(body).encode(), timeout=timeout)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise OSError(str(exc) or type(exc).__name__) from None
        return resp.json()

    async def aclose(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _failed(self, why: str) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_S:
            self._logged_at = now
            log.warning(
                "token-producer %r: vLLM render failed (%s); approx-prefix-cache-producer hashes "
                "the request's text estimate, precise-prefix-cache-producer matches nothing "
                "for it (%d failure(s) so far)",
                self.typed_name.name,
                why,
                self.failures,
            )
