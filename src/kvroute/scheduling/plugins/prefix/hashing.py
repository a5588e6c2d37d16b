"""Prefix block hashing: upstream's character blocks (level 1) and engine-aligned token blocks.

Level 1 reproduces upstream ``approximateprefix/hashing.go`` byte for byte so an index built by
kvroute agrees with one built by the Go EPP:

* the user input is the completion ``prompt`` as UTF-8, or for chat the bytes Go's
  ``json.Marshal`` produces for the typed ``[]Message{Role, Content}`` (see :func:`go_json`);
* it is cut into blocks of ``block_size_tokens * 4`` **bytes** (Go slices ``[]byte``; "4
  characters per token" is upstream's estimate), truncated to ``max_blocks`` blocks, and a
  trailing partial block is dropped;
* ``h0 = xxh64(target_model + cache_salt)`` and ``h_i = xxh64(block_i || le_u64(h_{i-1}))``,
  seed 0.

Levels 2 and 3 chain over token-id blocks instead, with the same construction:
``h0 = xxh64("kvroute/tokens\\0" + root_key)`` and
``h_i = xxh64(le_u32(tokens_i) || le_u64(h_{i-1}))``
where ``tokens_i`` holds exactly ``block_size`` token ids (the engine's KV block size), so block
*i* of a request hashes equal to block *i* the engine stored for the same tokens. The engine's own
block hash function is never needed (vLLM's is seeded by ``PYTHONHASHSEED`` or SHA-256 and may
change between versions).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import xxhash

from kvroute.framework.request import openai_shape
from kvroute.scheduling.request import ApiKind, InferenceRequest

AVERAGE_CHARS_PER_TOKEN = 4
_TOKEN_ROOT_PREFIX = b"kvroute/tokens\x00"
_PACK_U64 = struct.Struct("<Q").pack

_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _go_string(value: str) -> str:
    """A JSON string literal as Go's encoder writes it (HTML-safe, U+2028/9 escaped).

    Python and Go agree on ``\\" \\\\ \\n \\r \\t \\b \\f`` (Go >= 1.22) and on lowercase
    ``\\u00XX`` for the other control characters; only the HTML-safe escapes differ.
    """
    return json.dumps(value, ensure_ascii=False).translate(_GO_ESCAPES)


def go_json(value: Any) -> str:
    """Serialize like Go's ``json.Marshal`` of ``map[string]any`` / ``[]any`` values.

    Maps are written with sorted keys (Go sorts map keys), compact separators and Go's string
    escaping. Integers and floats use Python's shortest repr, which matches Go for the values
    that appear in prompts.
    """
    if isinstance(value, str):
        return _go_string(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, Mapping):
        items = sorted(value.items())
        return "{" + ",".join(f"{_go_string(str(k))}:{go_json(v)}" for k, v in items) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    return _go_string(str(value))


# Upstream's typed content block; fields in declaration order, all ``omitempty``.
_CONTENT_BLOCK_FIELDS = ("type", "text", "image_url", "input_audio", "video_url")


def _go_content(content: Any) -> str:
    if isinstance(content, str):
        return _go_string(content)
    if isinstance(content, Sequence):
        blocks = []
        for block in content:
            if not isinstance(block, Mapping):
                continue
            fields = [
                f"{_go_string(name)}:{go_json(block[name])}"
                for name in _CONTENT_BLOCK_FIELDS
                if block.get(name) not in (None, "", {}, [])
            ]
            blocks.append("{" + ",".join(fields) + "}")
        return "[" + ",".join(blocks) + "]"
    return go_json(content)


def go_json_messages(messages: Sequence[Mapping[str, Any]]) -> bytes:
    """``json.Marshal(messages)`` of upstream's typed ``Message{Role, Content}`` slice.

    Field order is ``role`` then ``content`` (struct order, not sorted); other message fields
    (``name``, ``tool_calls``...) are not part of the typed struct and are dropped, as upstream.
    """
    parts = [
        '{"role":' + _go_string(str(m.get("role", ""))) + ',"content":'
        f"{_go_content(m.get('content', ''))}}}"
        for m in messages
    ]
    return ("[" + ",".join(parts) + "]").encode()


def request_input_bytes(request: InferenceRequest) -> bytes:
    """The bytes upstream hashes for one request (``getUserInputBytes``).

    kvroute divergence: a request with media items hashes kvroute's prompt text instead, where
    each item is its content hash padded to its estimated tokens (:mod:`kvroute.protocol.media`),
    so the item enters the chain where it sits and spans as many blocks as its tokens, as in
    vLLM. Upstream marshals the data URL itself: megabytes of base64 per image, hashed in
    Python on every request, and a block boundary that depends on the encoding.
    """
    if request.media:
        return request.prompt_text.encode()
    body = request.body
    api = openai_shape(request.api)  # Vertex AI: the OpenAI JSON inside, hashed the same way
    if api is ApiKind.CHAT_COMPLETIONS:
        messages = body.get("messages")
        if isinstance(messages, Sequence) and not isinstance(messages, str):
            return go_json_messages(messages)
    elif api is ApiKind.COMPLETIONS:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return prompt.encode()
    elif api is ApiKind.RESPONSES:
        parts = [{k: body[k]} for k in ("instructions", "tools", "input") if k in body]
        if parts:
            return go_json(parts).encode()
    elif api is ApiKind.CONVERSATIONS and "items" in body:
        return go_json(body["items"]).encode()
    elif api is ApiKind.EMBEDDINGS and "input" in body:
        return go_json(body["input"]).encode()
    return request.prompt_text.encode()


def model_root_hash(target_model: str, cache_salt: str = "") -> int:
    """``h0`` of upstream's chain: xxh64 of the target model followed by the cache salt."""
    return xxhash.xxh64_intdigest((target_model + cache_salt).encode())


def char_block_hashes(data: bytes, *, block_chars: int, max_blocks: int, root: int) -> list[int]:
    """Upstream's chained hashes of full ``block_chars``-byte blocks of ``data``."""
    if block_chars <= 0:
        return []
    n_blocks = min(len(data) // block_chars, max_blocks)
    out: list[int] = []
    prev = root
    digest = xxhash.xxh64_intdigest
    pack = _PACK_U64
    # a bytes slice is one copy (a memoryview slice then bytes() was two objects per block)
    for start in range(0, n_blocks * block_chars, block_chars):
        prev = digest(data[start : start + block_chars] + pack(prev))
        out.append(prev)
    return out


def token_root_hash(root_key: str) -> int:
    """``h0`` of a token chain: ``root_key`` names the KV namespace (model or LoRA name)."""
    return xxhash.xxh64_intdigest(_TOKEN_ROOT_PREFIX + root_key.encode())


def token_block_hashes(
    tokens: Sequence[int], *, block_size: int, root: int, max_blocks: int | None = None
) -> list[int]:
    """Chained hashes of the full ``block_size``-token blocks of ``tokens``."""
    if block_size <= 0:
        return []
    n_blocks = len(tokens) // block_size
    if max_blocks is not None:
        n_blocks = min(n_blocks, max_blocks)
    if n_blocks == 0:
        return []
    # One struct call packs all ids; per-block slicing of the packed bytes is cheap.
    packed = struct.pack(f"<{n_blocks * block_size}I", *tokens[: n_blocks * block_size])
    step = 4 * block_size
    out: list[int] = []
    prev = root
    digest = xxhash.xxh64_intdigest
    pack = struct.Struct("<Q").pack
    for i in range(n_blocks):
        prev = digest(packed[i * step : (i + 1) * step] + pack(prev))
        out.append(prev)
    return out


def chain_token_block(parent: int, block_tokens: Sequence[int]) -> int:
    """One link of the token chain (used when replaying engine KV events block by block)."""
    return xxhash.xxh64_intdigest(
        struct.pack(f"<{len(block_tokens)}I", *block_tokens) + struct.pack("<Q", parent)
    )
