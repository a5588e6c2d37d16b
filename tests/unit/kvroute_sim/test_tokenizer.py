"""The deterministic tokenizer and chained block hashes (public: routers hash the same way)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvroute_sim.tokenizer import (
    ROOT_HASH,
    block_hashes,
    count_tokens,
    hash_block,
    output_tokens,
    render_chat,
    tokenize,
)


@pytest.mark.parametrize(
    ("text", "n"),
    [("hello world", 2), ("Hello, world!", 4), ("", 0), ("a  b\n\tc", 3), ("x_1 2.5", 4)],
    ids=["words", "punctuation", "empty", "whitespace-runs", "underscore-digits"],
)
def test_one_token_per_word_piece(text: str, n: int) -> None:
    assert len(tokenize(text)) == n
    assert count_tokens(text) == n


def test_identical_text_prefixes_give_identical_token_prefixes() -> None:
    a = tokenize("You are a helpful assistant. What is the capital of France?")
    b = tokenize("You are a helpful assistant. Tell me a joke.")
    assert a[:6] == b[:6]
    assert a[6] != b[6]


def test_ids_are_stable_across_processes() -> None:
    code = "from kvroute_sim.tokenizer import tokenize; print(tokenize('stable ids, please'))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == str(tokenize("stable ids, please"))


def test_block_hashes_chain_and_drop_the_partial_tail() -> None:
    ids = list(range(40))
    hashes = block_hashes(ids, 16)
    assert len(hashes) == 2
    assert hashes[0] == hash_block(ROOT_HASH, ids[:16])
    assert hashes[1] == hash_block(hashes[0], ids[16:32])
    # A different first block changes every later hash (the chain).
    other = block_hashes([99, *ids[1:]], 16)
    assert other[0] != hashes[0]
    assert other[1] != hashes[1]


def test_lora_name_is_part_of_the_block_key() -> None:
    ids = list(range(32))
    assert block_hashes(ids, 16) != block_hashes(ids, 16, lora="adapter")
    assert block_hashes(ids, 16, lora="a") != block_hashes(ids, 16, lora="b")


def test_chat_template_renders_roles_and_text_parts() -> None:
    text = render_chat(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
        ]
    )
    assert text == "<|system|>\nBe brief.\n<|user|>\nhi\n<|assistant|>\n"


def test_generated_text_retokenizes_to_the_generated_ids() -> None:
    ids, texts = output_tokens(seed=7, n=25)
    assert len(ids) == len(texts) == 25
    assert tokenize("".join(texts)) == ids
    assert output_tokens(seed=7, n=25) == (ids, texts)
