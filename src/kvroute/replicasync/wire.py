"""The replica-sync message: one msgpack map, versioned, bounded, optionally HMAC-tagged.

Layout (``WIRE_VERSION`` 1)::

    [32-byte HMAC-SHA256 tag, when a pool key is configured] + msgpack {
      "v": 1,                      # version; another version is dropped ("version")
      "r": "<replica id>",         # the sender, <= 128 chars
      "e": <int>,                  # the sender's incarnation (random at start): a restart resets
      "s": <int>,                  # sequence number within the incarnation
      "k": "d" | "f",              # delta, or full snapshot of the sender's own counts
      "l": {endpoint: [a, b, tokens, {model: n}]},
                                   # "d": a = sent, b = finished since the last message, tokens
                                   #      = signed token delta, models = signed request deltas
                                   # "f": a = in flight now, b = 0, tokens and models absolute
      "c": {channel: [entry, ...]} # plugins' replicated entries (prefix blocks, sessions, ...)
    }

No field is a time: a replica whose clock is off by seconds cannot move anyone's counters or
TTLs (entries that expire carry a *remaining* duration). Decoding checks the size before parsing
and every field's type and bound after; any failure raises :class:`Dropped` with a
:class:`DropReason` and nothing of that message is applied.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

WIRE_VERSION = 1
MAX_MESSAGE_BYTES = 512 * 1024
MAX_ID_CHARS = 128
MAX_ENDPOINTS = 4096
MAX_CHANNELS = 32
MAX_ENTRIES_PER_CHANNEL = 4096
TAG_BYTES = 32
_I64 = 1 << 63


class DropReason(StrEnum):
    OVERSIZE = "oversize"
    UNAUTHENTICATED = "unauthenticated"
    MALFORMED = "malformed"
    VERSION = "version"
    DUPLICATE = "duplicate"  # sequence number already seen from this incarnation
    OWN = "own"  # our own message looped back
    REJECTED = "rejected"  # a channel consumer refused its entries


class Dropped(Exception):
    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason


LoadRow = tuple[int, int, int, dict[str, int]]


@dataclass(slots=True)
class Message:
    replica: str
    epoch: int
    seq: int
    full: bool
    load: dict[str, LoadRow] = field(default_factory=dict)
    channels: dict[str, list[Any]] = field(default_factory=dict)


class Codec:
    """Encode/decode :class:`Message`; with ``key`` every message carries an HMAC-SHA256 tag
    and a message without the right tag is dropped as unauthenticated."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or None

    def encode(self, m: Message) -> bytes:
        body: bytes = msgpack.packb(
            {
                "v": WIRE_VERSION,
                "r": m.replica,
                "e": m.epoch,
                "s": m.seq,
                "k": "f" if m.full else "d",
                "l": {name: list(row) for name, row in m.load.items()},
                "c": m.channels,
            },
            use_bin_type=True,
        )
        if self._key is None:
            return body
        return hmac.digest(self._key, body, hashlib.sha256) + body

    def decode(self, data: bytes) -> Message:
        if len(data) > MAX_MESSAGE_BYTES:
            raise Dropped(DropReason.OVERSIZE, f"{len(data)} bytes")
        if self._key is not None:
            tag, data = data[:TAG_BYTES], data[TAG_BYTES:]
            if not hmac.compare_digest(tag, hmac.digest(self._key, data, hashlib.sha256)):
                raise Dropped(DropReason.UNAUTHENTICATED, "bad or missing tag")
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=True)  # size checked above
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            raise Dropped(DropReason.MALFORMED, f"not msgpack: {type(exc).__name__}") from exc
        if not isinstance(raw, dict):
            raise Dropped(DropReason.MALFORMED, "not a map")
        if raw.get("v") != WIRE_VERSION:
            raise Dropped(DropReason.VERSION, repr(raw.get("v"))[:32])
        return _validated(raw)


def _validated(raw: Mapping[str, Any]) -> Message:
    replica, epoch, seq, kind = raw.get("r"), raw.get("e"), raw.get("s"), raw.get("k")
    if not isinstance(replica, str) or not 0 < len(replica) <= MAX_ID_CHARS:
        raise Dropped(DropReason.MALFORMED, "replica id")
    if not isinstance(epoch, int) or not isinstance(seq, int) or kind not in ("d", "f"):
        raise Dropped(DropReason.MALFORMED, "epoch, seq or kind")
    if not _is_int(epoch) or not _is_int(seq) or seq < 0:
        raise Dropped(DropReason.MALFORMED, "epoch or seq")
    full = kind == "f"
    load_raw, chan_raw = raw.get("l", {}), raw.get("c", {})
    if not isinstance(load_raw, dict) or len(load_raw) > MAX_ENDPOINTS:
        raise Dropped(DropReason.MALFORMED, "load")
    load: dict[str, LoadRow] = {}
    for name, row in load_raw.items():
        load[_str(name)] = _row(row, full)
    if not isinstance(chan_raw, dict) or len(chan_raw) > MAX_CHANNELS:
        raise Dropped(DropReason.MALFORMED, "channels")
    channels: dict[str, list[Any]] = {}
    for chan, entries in chan_raw.items():
        if not isinstance(entries, list) or len(entries) > MAX_ENTRIES_PER_CHANNEL:
            raise Dropped(DropReason.MALFORMED, "channel entries")
        channels[_str(chan)] = entries
    return Message(_str(replica), epoch, seq, full, load, channels)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and -_I64 <= x < _I64


def _str(x: object) -> str:
    if not isinstance(x, str) or not 0 < len(x) <= 253:
        raise Dropped(DropReason.MALFORMED, "name")
    return x


def _row(row: object, full: bool) -> LoadRow:
    if not isinstance(row, list) or len(row) != 4:
        raise Dropped(DropReason.MALFORMED, "load row")
    a, b, tokens, models = row
    if not (_is_int(a) and _is_int(b) and _is_int(tokens)) or not isinstance(models, dict):
        raise Dropped(DropReason.MALFORMED, "load row")
    if a < 0 or b < 0 or (full and (b != 0 or tokens < 0)) or len(models) > MAX_ENDPOINTS:
        raise Dropped(DropReason.MALFORMED, "load row bounds")
    out: dict[str, int] = {}
    for model, n in models.items():
        if not _is_int(n) or (full and n < 0):
            raise Dropped(DropReason.MALFORMED, "model count")
        out[_str(model)] = int(n)
    return int(a), int(b), int(tokens), out
