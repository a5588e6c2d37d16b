"""Token ids of a request as the engine will see them, from a local Hugging Face tokenizer.

Token-accurate prefix routing (level 2) and the KV-event index (level 3) hash token blocks, so
the EPP must turn a request into the same token ids the engine computes:

* completions: ``tokenizer.encode(prompt, add_special_tokens=True)`` (vLLM adds BOS etc.);
* chat: the model's chat template rendered with jinja2 the way ``transformers`` does it
  (sandboxed environment, ``trim_blocks``/``lstrip_blocks``, ``loopcontrols``, ``tojson``,
  ``raise_exception``, ``strftime_now``; ``add_generation_prompt=True``), then encoded with
  ``add_special_tokens=False`` because the template already wrote BOS.

Only a local directory is read (``tokenizer.json``, optional ``tokenizer_config.json`` and
``chat_template.jinja``); nothing is downloaded. Tokenizing is the most expensive step on the
routing path (tens of microseconds per KB), so results are kept in a small LRU keyed by a 128-bit
hash of the input; ``benchmarks.md`` has the hit and miss costs.
"""

from __future__ import annotations

import json
import threading
from array import array
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import jinja2
import jinja2.ext
import jinja2.sandbox
import xxhash
from tokenizers import Tokenizer

from kvroute.errors import ConfigError
from kvroute.framework.request import ApiKind, InferenceRequest, openai_shape


class RequestTokenizer(Protocol):
    """Anything that turns a request into the engine's token ids (``None``: cannot).

    :class:`PromptTokenizer` is the production implementation; a simulator or a test may pass
    its own (e.g. an adapter over ``kvroute_sim.tokenizer``) to the prefix scorers.
    """

    def encode_request(self, request: InferenceRequest) -> Sequence[int] | None: ...


class ChatTemplateError(ValueError):
    """The chat template refused the messages (``raise_exception`` in the template)."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _special_token(config: Mapping[str, Any], name: str) -> str:
    value = config.get(name)
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else ""


class PromptTokenizer:
    """Encodes prompts and chat messages; ``encode_request`` returns ``None`` when it cannot."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        chat_template: str | None = None,
        special_tokens: Mapping[str, str] | None = None,
        cache_size: int = 1024,
    ) -> None:
        self._tokenizer = tokenizer
        self._special = dict(special_tokens or {})
        self._template: jinja2.Template | None = None
        if chat_template:
            env = jinja2.sandbox.ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
            )
            env.filters["tojson"] = _tojson
            env.globals["raise_exception"] = _raise_exception
            env.globals["strftime_now"] = _strftime_now
            self._template = env.from_string(chat_template)
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, array[int]] = OrderedDict()
        self._lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0

    @classmethod
    def from_directory(cls, directory: str | Path, *, cache_size: int = 1024) -> PromptTokenizer:
        """Load ``tokenizer.json`` (+ ``tokenizer_config.json``/``chat_template.jinja``)."""
        path = Path(directory)
        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ConfigError(f"tokenizer directory {path}: no tokenizer.json")
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise ConfigError(f"tokenizer directory {path}: {exc}") from exc
        config: dict[str, Any] = {}
        config_file = path / "tokenizer_config.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text(encoding="utf-8"))
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: take "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        jinja_file = path / "chat_template.jinja"
        if not template and jinja_file.is_file():
            template = jinja_file.read_text(encoding="utf-8")
        special = {
            name: _special_token(config, name)
            for name in ("bos_token", "eos_token", "unk_token", "pad_token")
        }
        return cls(
            tokenizer,
            chat_template=template if isinstance(template, str) else None,
            special_tokens=special,
            cache_size=cache_size,
        )

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    def render_chat(self, messages: Sequence[Mapping[str, Any]], **extra: Any) -> str:
        """The prompt text the engine builds from ``messages`` with the chat template."""
        if self._template is None:
            raise ChatTemplateError("tokenizer has no chat template")
        variables: dict[str, Any] = {**self._special, "add_generation_prompt": True, **extra}
        return self._template.render(messages=list(messages), **variables)

    def encode_text(self, text: str, *, add_special_tokens: bool = True) -> array[int]:
        key = xxhash.xxh3_128_digest(text.encode()) + (b"\x01" if add_special_tokens else b"\x00")
        # The director calls this from worker threads (asyncio.to_thread): the LRU is guarded;
        # the encode itself runs outside the lock (tokenizers is thread-safe, releases the GIL).
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return cached
            self.cache_misses += 1
        ids = array("I", self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)
        if self._cache_size > 0:
            with self._lock:
                self._cache[key] = ids
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return ids

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], **extra: Any) -> array[int]:
        return self.encode_text(self.render_chat(messages, **extra), add_special_tokens=False)

    def encode_request(self, request: InferenceRequest) -> array[int] | None:
        """Token ids of a completions/chat request, or ``None`` (caller falls back to level 1)."""
        body = request.body
        api = openai_shape(request.api)
        try:
            if api is ApiKind.CHAT_COMPLETIONS:
                messages = body.get("messages")
                if self._template is None or not isinstance(messages, Sequence):
                    return None
                extra = {"tools": body["tools"]} if body.get("tools") else {}
                return self.encode_chat(messages, **extra)
            if api is ApiKind.COMPLETIONS:
                prompt = body.get("prompt", request.prompt_text)
                if isinstance(prompt, str):
                    return self.encode_text(prompt)
                if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
                    return array("I", prompt)  # pre-tokenized prompt
        except (ChatTemplateError, jinja2.TemplateError):
            return None
        return None
