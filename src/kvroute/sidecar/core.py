"""The P/D sidecar's protocol, sans-IO: how a request becomes a prefill leg and a decode leg.

Upstream's sidecar (llm-d-router ``pkg/sidecar/proxy``, NIXL v2 connector), step by step:

1. A request without ``x-prefiller-host-port`` goes to the local model server unchanged.
2. Otherwise the prefill leg goes to that ``host:port``: the client's body with ``max_tokens``
   (and ``max_completion_tokens``) 1, ``stream`` false, no ``stream_options``, and
   ``kv_transfer_params`` = ``{"do_remote_decode": true, "do_remote_prefill": false,
   "remote_engine_id": null, "remote_block_ids": null, "remote_host": null,
   "remote_port": null}``, which is what vLLM's ``NixlConnector`` expects of a request whose
   KV cache another engine will pull.
3. The prefill server answers with ``kv_transfer_params`` naming where its KV blocks are
   (``remote_engine_id``, ``remote_block_ids``, ``remote_host``, ``remote_port``).
4. The decode leg is the client's body, unchanged but for ``kv_transfer_params`` = those values
   with ``do_remote_prefill`` true: the local server pulls the KV cache instead of prefilling.

If the prefill leg fails, times out or returns transfer parameters that are not that shape, the
decode leg is the client's body as sent (the local server prefills itself); the client never
sees the split. :func:`parse_transfer_params` is the validity rule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

PREFILLER_HEADER = "x-prefiller-host-port"
DATA_PARALLEL_HEADER = "x-data-parallel-host-port"
REQUEST_ID_HEADER = "x-request-id"
# Paths whose requests can be split; anything else passes through.
SPLITTABLE_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
# Hop-by-hop headers (RFC 9110 §7.6.1) and those the HTTP client recomputes.
_DROP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        PREFILLER_HEADER,
        DATA_PARALLEL_HEADER,
    }
)


class Mode(StrEnum):
    PASSTHROUGH = "passthrough"
    DISAGGREGATED = "disaggregated"
    FALLBACK = "fallback"


class FallbackReason(StrEnum):
    ERROR = "error"  # connection refused/reset, non-2xx status
    TIMEOUT = "timeout"
    MALFORMED = "malformed"  # not JSON, or kv_transfer_params missing or the wrong shape


class MalformedTransferParams(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Split:
    """A request to split: the prefill server and the parsed client body."""

    prefiller: str
    path: str
    body: Mapping[str, Any]


def forward_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's headers minus hop-by-hop ones and the prefiller header."""
    return {k: v for k, v in headers.items() if k.lower() not in _DROP_HEADERS}


def plan(method: str, path: str, headers: Mapping[str, str], body: bytes) -> Split | None:
    """``Split`` when the request should be disaggregated, None to pass it through."""
    prefiller = next((v for k, v in headers.items() if k.lower() == PREFILLER_HEADER), "")
    prefiller = prefiller.split(",", 1)[0].strip()
    path = path.split("?", 1)[0]
    if not prefiller or method != "POST" or path not in SPLITTABLE_PATHS:
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None  # let the model server answer the bad body itself
    if not isinstance(parsed, dict):
        return None
    return Split(prefiller, path, parsed)


def prefill_body(body: Mapping[str, Any]) -> bytes:
    out = dict(body)
    out["max_tokens"] = 1
    if "max_completion_tokens" in out:
        out["max_completion_tokens"] = 1
    out["stream"] = False
    out.pop("stream_options", None)
    out["kv_transfer_params"] = {
        "do_remote_decode": True,
        "do_remote_prefill": False,
        "remote_engine_id": None,
        "remote_block_ids": None,
        "remote_host": None,
        "remote_port": None,
    }
    return json.dumps(out, separators=(",", ":")).encode()


def parse_transfer_params(response: bytes) -> dict[str, Any]:
    """The prefill answer's ``kv_transfer_params``, or :class:`MalformedTransferParams`."""
    try:
        doc = json.loads(response)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedTransferParams(f"prefill answer is not JSON: {exc}") from None
    params = doc.get("kv_transfer_params") if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        raise MalformedTransferParams("prefill answer has no kv_transfer_params object")
    engine, blocks = params.get("remote_engine_id"), params.get("remote_block_ids")
    host, port = params.get("remote_host"), params.get("remote_port")
    if not isinstance(engine, str) or not engine:
        raise MalformedTransferParams("kv_transfer_params.remote_engine_id must be a string")
    if not isinstance(blocks, list) or not all(
        isinstance(b, int) and not isinstance(b, bool) for b in blocks
    ):
        raise MalformedTransferParams("kv_transfer_params.remote_block_ids must be integers")
    if not isinstance(host, str) or not host:
        raise MalformedTransferParams("kv_transfer_params.remote_host must be a string")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise MalformedTransferParams("kv_transfer_params.remote_port must be a port number")
    return params


def decode_body(body: Mapping[str, Any], params: Mapping[str, Any]) -> bytes:
    out = dict(body)
    out["kv_transfer_params"] = {**params, "do_remote_prefill": True, "do_remote_decode": False}
    return json.dumps(out, separators=(",", ":")).encode()


def data_parallel_rank(headers: Mapping[str, str], listen_port: int, dp_size: int) -> int:
    """The DP rank ``x-data-parallel-host-port`` names (its port minus the sidecar's own), as
    upstream's sidecar maps ``podIP:port+r`` to ``localhost:model-server-port+r``; 0 when the
    header is absent, malformed or out of range (the primary rank serves it)."""
    value = next((v for k, v in headers.items() if k.lower() == DATA_PARALLEL_HEADER), "")
    _, sep, port = value.strip().rpartition(":")
    if dp_size <= 1 or not sep or not port.isdigit():
        return 0
    rank = int(port) - listen_port
    return rank if 0 <= rank < dp_size else 0
