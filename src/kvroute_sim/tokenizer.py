"""The simulator's deterministic tokenizer and block hashing, public so routers can hash alike.

Why a tokenizer of its own: the simulator must run offline with no model files, yet prefix
caching only works if identical text prefixes give identical token prefixes. One token per word
piece does that, and it is cheap:

- ``tokenize(text)`` splits ``text`` into word pieces with the regex ``\\w+|[^\\w\\s]`` (a run of
  letters/digits/underscore, or one punctuation character; whitespace is dropped) and maps each
  piece to ``xxh32(piece.encode()) % VOCAB_SIZE + FIRST_ID``. The mapping is stable across
  processes and Python versions (no ``hash()`` randomisation).
- ``render_chat(messages)`` is the chat template: ``<|role|>`` + newline + content + newline per
  message, then ``<|assistant|>`` + newline. The template's pieces tokenize like any other text.
- ``block_hashes(token_ids, block_size, lora)`` chains one 64-bit hash per *full* block, as
  vLLM's prefix cache keys blocks: ``h_i = xxh3_64(le_u64(h_{i-1}) || le_u32 token ids ||
  lora name)`` with ``h_{-1} = ROOT_HASH``. A trailing partial block gets no hash.

Generated text comes from ``OUTPUT_WORDS`` (plain words, one token each), so a response fed back
in a later turn re-tokenizes to exactly the ids the engine generated and cached.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable, Mapping, Sequence

import xxhash

VOCAB_SIZE = 1 << 17
FIRST_ID = 256  # ids below are never produced; room for special tokens
ROOT_HASH = 0
_PIECE = re.compile(r"\w+|[^\w\s]")

_OUTPUT_TEXT = (
    "the model answers with simulated words that carry no meaning but keep count of "
    "tokens so every client sees the same length as the server reports in usage while "
    "latency follows the engine step by step under continuous batching and prefix reuse "
    "across requests sharing blocks in cache memory until eviction frees space again now"
)
OUTPUT_WORDS: tuple[str, ...] = tuple(_OUTPUT_TEXT.split())


def token_id(piece: str) -> int:
    """The id of one word piece (stable across processes)."""
    return int(xxhash.xxh32_intdigest(piece.encode())) % VOCAB_SIZE + FIRST_ID


def tokenize(text: str) -> list[int]:
    """Token ids of ``text``: one per word piece (see the module docstring)."""
    return [token_id(p) for p in _PIECE.findall(text)]


def count_tokens(text: str) -> int:
    """The number of tokens ``tokenize(text)`` would return, without building the ids."""
    return len(_PIECE.findall(text))


def render_chat(messages: Iterable[Mapping[str, object]]) -> str:
    """Render OpenAI chat messages to one prompt string (the simulator's chat template).

    ``content`` may be a string or a list of ``{"type": "text", "text": ...}`` parts; other part
    types contribute nothing (the simulator has no vision or audio).
    """
    out: list[str] = []
    for msg in messages:
        role = str(msg.get("role", "user"))
        content = msg.get("content", "")
        if isinstance(content, list):
            text = " ".join(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, Mapping) and part.get("type") == "text"
            )
        elif content is None:
            text = ""
        else:
            text = str(content)
        out.append(f"<|{role}|>\n{text}\n")
    out.append("<|assistant|>\n")
    return "".join(out)


_OUTPUT_IDS: tuple[int, ...] = tuple(token_id(w) for w in OUTPUT_WORDS)


def output_tokens(seed: int, n: int) -> tuple[list[int], list[str]]:
    """``n`` deterministic generated tokens for a request: their ids and their texts.

    The texts carry a leading space (except the first) so joining them gives readable text
    that re-tokenizes to the same ids.
    """
    k = len(OUTPUT_WORDS)
    start = seed % k
    ids = [_OUTPUT_IDS[(start + i * 7) % k] for i in range(n)]
    texts = [("" if i == 0 else " ") + OUTPUT_WORDS[(start + i * 7) % k] for i in range(n)]
    return ids, texts


def hash_block(parent: int, tokens: Sequence[int], lora: str | None = None) -> int:
    """The chained hash of one full block whose predecessor's hash is ``parent``."""
    data = parent.to_bytes(8, "little") + array("I", tokens).tobytes()
    if lora:
        data += lora.encode()
    return int(xxhash.xxh3_64_intdigest(data))


def block_hashes(
    token_ids: Sequence[int],
    block_size: int = 16,
    lora: str | None = None,
    parent: int = ROOT_HASH,
) -> list[int]:
    """Chained hashes of every full ``block_size`` block of ``token_ids`` (partial tail dropped)."""
    out: list[int] = []
    h = parent
    suffix = lora.encode() if lora else b""
    buf = array("I", token_ids).tobytes()
    step = 4 * block_size
    for i in range(len(token_ids) // block_size):
        h = int(
            xxhash.xxh3_64_intdigest(
                h.to_bytes(8, "little") + buf[i * step : (i + 1) * step] + suffix
            )
        )
        out.append(h)
    return out
