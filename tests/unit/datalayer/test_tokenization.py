"""Local Hugging Face tokenizer loading, chat templates and the token cache.

The tokenizer is a real ``tokenizers`` byte-level BPE with no merges (one token per UTF-8 byte,
plus ``<s>``/``</s>``), written to ``tmp_path`` the way a model directory holds it, so the
expected ids can be worked out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from kvroute.datalayer.tokenization import ChatTemplateError, PromptTokenizer
from kvroute.errors import ConfigError
from kvroute.scheduling.request import ApiKind, InferenceRequest

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'tool' %}{{ raise_exception('no tools') }}{% endif %}"
    "<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write_tokenizer_dir(directory: Path, *, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """A model directory with a byte-level tokenizer: id(byte b) = 2 + rank of b's char."""
    vocab = {"<s>": 0, "</s>": 1}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config: dict[str, Any] = {"bos_token": "<s>", "eos_token": {"content": "</s>"}}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def byte_ids(text: str) -> list[int]:
    """Hand computation of the tokenizer above: printable ASCII byte b -> id b - 31."""
    assert all(33 <= b <= 126 for b in text.encode()), "helper covers printable ASCII only"
    return [b - 31 for b in text.encode()]


@pytest.fixture
def tokenizer(tmp_path: Path) -> PromptTokenizer:
    return PromptTokenizer.from_directory(write_tokenizer_dir(tmp_path / "model"))


def _request(api: ApiKind, body: dict[str, Any]) -> InferenceRequest:
    return InferenceRequest(
        request_id="r", incoming_model="m", target_model="m", api=api, body=MappingProxyType(body)
    )


def test_completion_prompt_gets_bos(tokenizer: PromptTokenizer) -> None:
    ids = tokenizer.encode_request(_request(ApiKind.COMPLETIONS, {"prompt": "abc"}))
    assert ids is not None
    assert list(ids) == [0, *byte_ids("abc")]


def test_chat_template_rendered_then_encoded_without_extra_bos(tokenizer: PromptTokenizer) -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert tokenizer.render_chat(messages) == "<s><|user|>hi</s><|assistant|>"
    ids = tokenizer.encode_request(_request(ApiKind.CHAT_COMPLETIONS, {"messages": messages}))
    assert ids is not None
    # exactly one BOS (from the template), the EOS special token, no post-processor BOS
    assert list(ids) == [0, *byte_ids("<|user|>hi"), 1, *byte_ids("<|assistant|>")]


def test_pre_tokenized_prompt_passes_through(tokenizer: PromptTokenizer) -> None:
    ids = tokenizer.encode_request(_request(ApiKind.COMPLETIONS, {"prompt": [5, 6, 7]}))
    assert ids is not None
    assert list(ids) == [5, 6, 7]


@pytest.mark.parametrize(
    ("api", "body"),
    [
        (ApiKind.CHAT_COMPLETIONS, {"messages": [{"role": "tool", "content": "x"}]}),
        (ApiKind.EMBEDDINGS, {"input": "x"}),
        (ApiKind.COMPLETIONS, {"prompt": [["nested"]]}),
    ],
    ids=["template-raises", "unsupported-api", "unsupported-prompt"],
)
def test_unencodable_requests_return_none(
    tokenizer: PromptTokenizer, api: ApiKind, body: dict[str, Any]
) -> None:
    assert tokenizer.encode_request(_request(api, body)) is None


def test_no_chat_template_means_no_chat_tokens(tmp_path: Path) -> None:
    tok = PromptTokenizer.from_directory(write_tokenizer_dir(tmp_path, chat_template=None))
    assert not tok.has_chat_template
    chat = _request(ApiKind.CHAT_COMPLETIONS, {"messages": [{"role": "user", "content": "x"}]})
    assert tok.encode_request(chat) is None
    with pytest.raises(ChatTemplateError):
        tok.render_chat([])


def test_chat_template_jinja_file_is_used(tmp_path: Path) -> None:
    directory = write_tokenizer_dir(tmp_path, chat_template=None)
    (directory / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    tok = PromptTokenizer.from_directory(directory)
    assert tok.render_chat([{"role": "user", "content": "abc"}]) == "abc"


def test_named_templates_pick_default(tmp_path: Path) -> None:
    directory = write_tokenizer_dir(
        tmp_path,
        chat_template=None,
    )
    config = {
        "chat_template": [
            {"name": "tool_use", "template": "T"},
            {"name": "default", "template": "D"},
        ]
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    assert PromptTokenizer.from_directory(directory).render_chat([]) == "D"


def test_cache_hits_return_same_ids_and_evict(tmp_path: Path) -> None:
    tok = PromptTokenizer.from_directory(write_tokenizer_dir(tmp_path), cache_size=2)
    first = tok.encode_text("abc")
    again = tok.encode_text("abc")
    assert again is first
    assert (tok.cache_hits, tok.cache_misses) == (1, 1)
    tok.encode_text("d")
    tok.encode_text("e")  # evicts "abc"
    tok.encode_text("abc")
    assert tok.cache_misses == 4
    # with and without special tokens are different cache entries
    assert list(tok.encode_text("abc", add_special_tokens=False)) == byte_ids("abc")


@pytest.mark.parametrize(
    "setup",
    ["missing", "garbage"],
    ids=["no-tokenizer-json", "invalid-tokenizer-json"],
)
def test_bad_directory_is_a_config_error(tmp_path: Path, setup: str) -> None:
    if setup == "garbage":
        (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError, match="tokenizer"):
        PromptTokenizer.from_directory(tmp_path)
