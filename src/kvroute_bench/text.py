"""The bench's synthetic prompt text: one short word per token id, ~4 characters per token.

kvroute's EPP sees prompt text, not token ids, and estimates ``len(text) / 4`` tokens (the
director, the prefix scorer's 64-character blocks of 16 estimated tokens, the load scorers).
Real English text under a Llama-style tokenizer is close to that figure. The bench's prompts
are token-id tuples, so their text must have the same ratio, or every text-based estimate is
off: the first renderer (``w<id>`` words, 8-11 characters per token) made the prefix scorer's
256-block window cover ~1,490 tokens instead of ~4,096.

Each token id maps to one lowercase word of 2, 3 or 4 letters (1 : 2 : 1, so 3 letters on
average) through ``xxh32`` of its 8 little-endian bytes into a fixed table; words are joined by
single spaces, so a prompt of ``n`` tokens renders to ``4n - 1`` characters on average.
Properties the bench relies on:

- deterministic: the table and the hash are fixed, so the text depends only on the ids (which
  depend only on the workload's seed);
- a shared token prefix renders to a byte-identical text prefix (the mapping is per token);
- distinct token sequences render to distinct text: two different ids give the same word with
  probability ~1e-4, so a 16-token (64-character) block matches by accident with probability
  ~1e-64; nothing in the generated workloads is shared in text that is not shared in tokens,
  beyond at most a word or two at the point where two prompts diverge;
- one word piece per token for the simulator's own tokenizer (``kvroute_sim.tokenizer``:
  ``\\w+`` runs), so a live run's servers count the same number of prompt tokens.

The mapping is not invertible (a word stands for many ids); a tokenizer that needs the ids back
looks the text up among the requests it was rendered from.
"""

from __future__ import annotations

import functools
import random
import string
from collections.abc import Iterable

import xxhash

TABLE_BITS = 14
_MASK = (1 << TABLE_BITS) - 1
_TABLE_SEED = 0x6B76  # fixed: changing it changes every prompt's text
_LENGTHS = (2, 3, 3, 4)  # letters per word, drawn uniformly: mean 3, + 1 space = 4 characters
CHARS_PER_TOKEN = 4.0  # the design figure (what kvroute's estimates assume)


@functools.cache
def word_table() -> tuple[str, ...]:
    """The ``2**TABLE_BITS`` words token ids map into (built once, deterministic)."""
    rng = random.Random(_TABLE_SEED)
    letters = string.ascii_lowercase
    return tuple(
        "".join(rng.choices(letters, k=rng.choice(_LENGTHS))) for _ in range(1 << TABLE_BITS)
    )


def token_word(token: int) -> str:
    """The word one token id renders to."""
    return word_table()[xxhash.xxh32_intdigest(token.to_bytes(8, "little", signed=True)) & _MASK]


def render(tokens: Iterable[int]) -> str:
    """Token ids as text: one word per token, single spaces between."""
    table = word_table()
    h = xxhash.xxh32_intdigest
    return " ".join([table[h(t.to_bytes(8, "little", signed=True)) & _MASK] for t in tokens])
