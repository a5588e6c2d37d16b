"""The EPP's side of the response tap (``tap`` response processing, issue 19), sans-IO.

With ``tap`` the response body never travels through the ext_proc stream: Envoy's Lua filter
(:mod:`kvroute.gateway.response_tap`) restores the model name itself and, at the end of the
response, sends what the EPP needs for usage in one unary gRPC call. This module holds the names
both sides agree on, parses that call's payload, and turns it back into body bytes that the
EPP's ordinary response filter can read usage from.

Payload: ``id``, ``kind``, ``total``, ``first_ms``, ``status``, ``sse`` (1 for
``text/event-stream``), ``served`` (the ``x-gateway-destination-endpoint-served`` response
header) and ``head_len``, each ending in ``\\n``, then ``head_len`` bytes of head and the rest
as tail. (The ext_proc filter skips the response headers in tap mode, one message pair less per
request; the report carries what the EPP read from them.) ``kind`` ``whole``: the head is the
entire body; ``edges``: the body was longer than the Lua filter keeps, head and tail are its
first and last bytes; ``skip``: the body was compressed and not read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = [
    "TAP_CLUSTER_PREFIX",
    "TAP_METHOD",
    "TAP_NAMESPACE",
    "TapReport",
    "TapReportError",
    "parse_report",
    "tap_metadata",
]

TAP_NAMESPACE = "kvroute.tap"
# An EPP on TCP port P is reached for reports through Envoy cluster ``kvroute_epp_tap_<P>`` (the
# generated config has one per EPP replica, so a report goes to the replica holding the stream);
# an EPP on a Unix socket (one EPP) through the ext_proc cluster itself.
TAP_CLUSTER_PREFIX = "kvroute_epp_tap_"
TAP_SERVICE = "kvroute.tap.v1.ResponseTap"
TAP_METHOD = f"/{TAP_SERVICE}/Report"
_KINDS = frozenset({"whole", "edges", "skip"})


class TapReportError(ValueError):
    """A payload the Lua filter cannot have sent (answered INVALID_ARGUMENT)."""


@dataclass(frozen=True, slots=True)
class TapReport:
    tap_id: str
    kind: str
    total_bytes: int
    first_ms: float | None  # ms from the first body byte to the report; None when unknown
    status: int | None
    sse: bool
    served: str
    head: bytes
    tail: bytes

    def usage_body(self, streaming: bool) -> bytes | None:
        """Bytes to feed the response filter as one whole body, None when nothing was read.

        ``edges`` of an SSE stream: the head cut after its last complete event and the tail
        from its first complete event, so the parser sees whole events (the stream's first ones
        carry e.g. Anthropic's input tokens, its last ones the final usage). ``edges`` of a JSON
        document: the last ``"usage"`` (or SGLang ``"meta_info"``) object found in the tail, as
        a one-key document (servers write it after the choices); None when there is none.
        """
        if self.kind == "whole":
            return self.head
        if self.kind == "skip":
            return None
        if not streaming:
            return _usage_document(self.tail)
        cut = self.head.rfind(b"\n\n")
        head = self.head[: cut + 2] if cut >= 0 else b""
        start = self.tail.find(b"\n\n")
        tail = self.tail[start + 2 :] if start >= 0 else b""
        return head + tail


_DECODER = json.JSONDecoder()


def _usage_document(tail: bytes) -> bytes | None:
    text = tail.decode("utf-8", "replace")
    for key in ("usage", "meta_info"):
        at = text.rfind(f'"{key}"')
        if at < 0:
            continue
        brace = text.find("{", at)
        if brace < 0 or text[at + len(key) + 2 : brace].strip() != ":":
            continue
        try:
            value, _ = _DECODER.raw_decode(text, brace)
        except ValueError:
            continue
        return json.dumps({key: value}).encode()
    return None


def parse_report(payload: bytes) -> TapReport:
    parts = payload.split(b"\n", 8)
    if len(parts) != 9:
        raise TapReportError("tap report: expected 8 header lines")
    raw_id, raw_kind, raw_total, raw_first, raw_status, raw_sse, raw_served, raw_head_len, rest = (
        parts
    )
    kind = raw_kind.decode("ascii", "replace")
    if kind not in _KINDS:
        raise TapReportError(f"tap report: unknown kind {kind!r}")
    try:
        total = int(raw_total)
        first = float(raw_first)
        status = int(raw_status)
        head_len = int(raw_head_len)
    except ValueError as exc:
        raise TapReportError(f"tap report: bad number ({exc})") from None
    if total < 0 or head_len < 0 or head_len > len(rest):
        raise TapReportError("tap report: lengths out of range")
    return TapReport(
        tap_id=raw_id.decode("ascii", "replace"),
        kind=kind,
        total_bytes=total,
        first_ms=first if first >= 0 else None,
        status=status if status > 0 else None,
        sse=raw_sse == b"1",
        served=raw_served.decode("utf-8", "replace"),
        head=rest[:head_len],
        tail=rest[head_len:],
    )


def tap_metadata(tap_id: str, incoming_model: str, target_model: str) -> dict[str, str]:
    """What the Lua filter needs: the report id, and the JSON-encoded served (``from``) and
    client-facing (``to``) model names when the model was rewritten."""
    out = {"id": tap_id}
    if incoming_model and target_model and incoming_model != target_model:
        out["from"] = json.dumps(target_model, ensure_ascii=False)
        out["to"] = json.dumps(incoming_model, ensure_ascii=False)
    return out
