"""Prefix block hashing against hand-worked examples.

Every expected value is rebuilt here step by step from the upstream definition (xxh64, seed 0,
``h0 = xxh64(model + salt)``, ``h_i = xxh64(block || le_u64(h_{i-1}))``), independently of the
code under test.
"""

from __future__ import annotations

import random
import struct
from types import MappingProxyType
from typing import Any

import pytest
import xxhash

from kvroute.scheduling.plugins.prefix.hashing import (
    chain_token_block,
    char_block_hashes,
    go_json,
    go_json_messages,
    model_root_hash,
    request_input_bytes,
    token_block_hashes,
    token_root_hash,
)
from kvroute.scheduling.request import ApiKind, InferenceRequest


def _le64(v: int) -> bytes:
    return v.to_bytes(8, "little")


def test_root_is_xxh64_of_model_then_salt() -> None:
    assert model_root_hash("llama") == xxhash.xxh64(b"llama", seed=0).intdigest()
    assert model_root_hash("llama", "s1") == xxhash.xxh64(b"llamas1").intdigest()


def test_char_blocks_hand_worked() -> None:
    # blockSizeTokens=2 -> 8-byte blocks; 20 bytes -> two full blocks, 4 trailing bytes dropped.
    data = b"AAAAAAAABBBBBBBBCCCC"
    h0 = xxhash.xxh64(b"m").intdigest()
    h1 = xxhash.xxh64(b"AAAAAAAA" + _le64(h0)).intdigest()
    h2 = xxhash.xxh64(b"BBBBBBBB" + _le64(h1)).intdigest()
    got = char_block_hashes(data, block_chars=8, max_blocks=256, root=model_root_hash("m"))
    assert got == [h1, h2]


@pytest.mark.parametrize(
    ("length", "max_blocks", "expected_blocks"),
    [(63, 256, 0), (64, 256, 1), (127, 256, 1), (128, 256, 2), (64 * 10, 3, 3)],
    ids=["shorter-than-a-block", "exactly-one", "partial-dropped", "two", "truncated-to-max"],
)
def test_char_block_count(length: int, max_blocks: int, expected_blocks: int) -> None:
    got = char_block_hashes(b"x" * length, block_chars=64, max_blocks=max_blocks, root=1)
    assert len(got) == expected_blocks


def test_chain_depends_on_everything_before() -> None:
    a = char_block_hashes(b"a" * 64 + b"b" * 64, block_chars=64, max_blocks=9, root=7)
    b = char_block_hashes(b"c" * 64 + b"b" * 64, block_chars=64, max_blocks=9, root=7)
    c = char_block_hashes(b"a" * 64 + b"b" * 64, block_chars=64, max_blocks=9, root=8)
    assert a[1] != b[1]  # same second block, different first block
    assert a[0] != c[0]  # different model/salt root


def test_char_blocks_are_bytes_not_code_points() -> None:
    # "é" is two UTF-8 bytes: Go slices []byte, so 4 of them fill one 8-byte block.
    data = "éééé".encode()
    h0 = 5
    expected = xxhash.xxh64(data + _le64(h0)).intdigest()
    assert char_block_hashes(data, block_chars=8, max_blocks=4, root=h0) == [expected]


def test_token_blocks_hand_worked() -> None:
    tokens = [1, 2, 3, 4, 5, 6, 7]  # block size 3: [1,2,3] [4,5,6], 7 dropped
    h0 = xxhash.xxh64(b"kvroute/tokens\x00model-a").intdigest()
    assert token_root_hash("model-a") == h0
    h1 = xxhash.xxh64(struct.pack("<3I", 1, 2, 3) + _le64(h0)).intdigest()
    h2 = xxhash.xxh64(struct.pack("<3I", 4, 5, 6) + _le64(h1)).intdigest()
    assert token_block_hashes(tokens, block_size=3, root=h0) == [h1, h2]
    assert token_block_hashes(tokens, block_size=3, root=h0, max_blocks=1) == [h1]
    # one link at a time (the KV-event path) gives the same chain
    assert chain_token_block(chain_token_block(h0, [1, 2, 3]), [4, 5, 6]) == h2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a<b>&c", '"a\\u003cb\\u003e\\u0026c"'),
        ('line\nbreak\ttab"q\\', '"line\\nbreak\\ttab\\"q\\\\"'),
        ("\u2028\u2029", '"\\u2028\\u2029"'),
        ("\x01\x1f", '"\\u0001\\u001f"'),
        ("héllo ✓", '"héllo ✓"'),
        ({"b": 1, "a": [True, None, 1.5]}, '{"a":[true,null,1.5],"b":1}'),
    ],
    ids=["html-escapes", "common-escapes", "line-separators", "controls", "utf8-raw", "map-sorted"],
)
def test_go_json_matches_go_encoder(value: Any, expected: str) -> None:
    assert go_json(value) == expected


def test_chat_messages_as_go_typed_structs() -> None:
    messages = [
        {"content": "You are <helpful>", "role": "system", "name": "dropped"},
        {"role": "user", "content": [{"text": "hi", "type": "text", "extra": 1}]},
    ]
    assert go_json_messages(messages) == (
        b'[{"role":"system","content":"You are \\u003chelpful\\u003e"},'
        b'{"role":"user","content":[{"type":"text","text":"hi"}]}]'
    )


def _request(api: ApiKind, body: dict[str, Any], prompt_text: str = "") -> InferenceRequest:
    return InferenceRequest(
        request_id="r",
        incoming_model="m",
        target_model="m",
        api=api,
        body=MappingProxyType(body),
        prompt_text=prompt_text,
    )


@pytest.mark.parametrize(
    ("api", "body", "expected"),
    [
        (ApiKind.COMPLETIONS, {"prompt": "hello"}, b"hello"),
        (
            ApiKind.CHAT_COMPLETIONS,
            {"messages": [{"role": "user", "content": "hi"}]},
            b'[{"role":"user","content":"hi"}]',
        ),
        (ApiKind.EMBEDDINGS, {"input": ["a", "b"]}, b'["a","b"]'),
        (
            ApiKind.RESPONSES,
            {"instructions": "be brief", "input": "q"},
            b'[{"instructions":"be brief"},{"input":"q"}]',
        ),
        (ApiKind.COMPLETIONS, {"prompt": [1, 2]}, b"fallback"),
    ],
    ids=["completions", "chat", "embeddings", "responses", "token-prompt-uses-prompt-text"],
)
def test_request_input_bytes(api: ApiKind, body: dict[str, Any], expected: bytes) -> None:
    assert request_input_bytes(_request(api, body, prompt_text="fallback")) == expected


def test_char_blocks_match_a_reference_chain_on_random_inputs() -> None:
    """Against a plain reference chain (xxh64 of block || le64(previous)) over random bytes,
    block sizes, lengths and caps: the same hashes, so indexes built before agree."""
    rng = random.Random(9)
    for _ in range(300):
        block = rng.choice([1, 4, 8, 64, 256])
        data = rng.randbytes(rng.randint(0, 2000))
        cap = rng.choice([1, 3, 256])
        root = rng.getrandbits(64)
        expected, prev = [], root
        for i in range(min(len(data) // block, cap)):
            prev = xxhash.xxh64(data[i * block : (i + 1) * block] + _le64(prev)).intdigest()
            expected.append(prev)
        assert char_block_hashes(data, block_chars=block, max_blocks=cap, root=root) == expected
