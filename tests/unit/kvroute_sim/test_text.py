"""Real (Hugging Face) tokenizers for the HTTP shell, and the generated tokenizer directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvroute_sim.text import HFText, WordPieceText, make_tokenizer, text_tokenizer
from kvroute_sim.tokenizer import tokenize


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=600)


def test_generated_directory_has_what_autotokenizer_reads(tok_dir: Path) -> None:
    assert (tok_dir / "tokenizer.json").is_file()
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "chat_template" in config


def test_hf_output_tokens_reencode_to_the_same_ids(tok_dir: Path) -> None:
    text = HFText(tok_dir)
    ids, texts = text.output_tokens(seed=5, n=30)
    assert len(ids) == 30
    assert text.encode("".join(texts)) == ids


def test_hf_encoding_is_deterministic_and_prefix_stable(tok_dir: Path) -> None:
    text = HFText(tok_dir / "tokenizer.json")
    a = text.encode("system prompt 12 w3 w4 question")
    b = text.encode("system prompt 12 w3 w4 other")
    assert a == text.encode("system prompt 12 w3 w4 question")
    assert a[:4] == b[:4]


def test_default_is_the_word_piece_tokenizer() -> None:
    t = text_tokenizer(None)
    assert isinstance(t, WordPieceText)
    assert t.encode("a b, c") == tokenize("a b, c")
