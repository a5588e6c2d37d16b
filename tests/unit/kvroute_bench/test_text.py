"""The bench's synthetic prompt text: ~4 characters per token, shared exactly where tokens are."""

from __future__ import annotations

import itertools

import pytest

from kvroute_bench.text import TABLE_BITS, render, token_word, word_table
from kvroute_bench.workload import PRESETS, BenchRequest, generate, resolve_spec
from kvroute_sim.tokenizer import count_tokens

EPP_CHARS_PER_TOKEN = 4  # the director's and the prefix scorer's estimate
EPP_BLOCK_CHARS = 16 * EPP_CHARS_PER_TOKEN  # the prefix scorer's block (16 estimated tokens)
# presets whose prompts share prefixes (system prompts, histories, repository contexts)
SHARING = ("shared-prefix", "shared-prefix-low", "shared-prefix-sglang", "multi-turn")
SHARING += ("agent-sessions", "code-generation")


def _requests(name: str, seed: int = 1) -> list[BenchRequest]:
    return generate(resolve_spec(name), rate=20, duration=5, seed=seed)


def _pairs(reqs: list[BenchRequest]) -> list[tuple[BenchRequest, BenchRequest]]:
    """Each request with the previous one of its group (prefix group, session, agent, repo)."""
    last: dict[str, BenchRequest] = {}
    out = []
    for r in reqs:
        if r.group in last:
            out.append((last[r.group], r))
        last[r.group] = r
    return out


def _common(a: str, b: str) -> int:
    """Characters the two texts share from the start."""
    n = min(len(a), len(b))
    i = next((i for i in range(n) if a[i] != b[i]), n)
    return i


def _common_tokens(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@pytest.mark.parametrize("name", sorted(PRESETS), ids=sorted(PRESETS))
def test_epp_estimate_matches_the_simulated_prompt_within_2_percent(name: str) -> None:
    reqs = _requests(name)
    estimated = sum(len(r.text()) // EPP_CHARS_PER_TOKEN for r in reqs)
    real = sum(r.prompt_len for r in reqs)
    assert estimated / real == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("name", sorted(PRESETS), ids=sorted(PRESETS))
def test_every_prompt_of_256_tokens_or_more_is_estimated_within_10_percent(name: str) -> None:
    reqs = [r for r in _requests(name) if r.prompt_len >= 256]
    errors = [abs(len(r.text()) / EPP_CHARS_PER_TOKEN / r.prompt_len - 1.0) for r in reqs]
    assert max(errors, default=0.0) < 0.10


@pytest.mark.parametrize("name", sorted(PRESETS), ids=sorted(PRESETS))
def test_one_word_piece_per_token_for_the_simulators_tokenizer(name: str) -> None:
    reqs = _requests(name)
    assert [count_tokens(r.text()) for r in reqs] == [r.prompt_len for r in reqs]


def test_text_depends_only_on_the_token_ids() -> None:
    a = [r.text() for r in _requests("multi-turn", seed=2)]
    b = [r.text() for r in _requests("multi-turn", seed=2)]
    assert a == b


def test_other_seeds_render_other_text() -> None:
    a = {r.text()[:EPP_BLOCK_CHARS] for r in _requests("sharegpt", seed=1)}
    b = {r.text()[:EPP_BLOCK_CHARS] for r in _requests("sharegpt", seed=2)}
    assert not a & b


def test_words_are_short_lowercase_and_average_3_letters() -> None:
    table = word_table()
    mean = sum(len(w) for w in table) / len(table)
    assert len(table) == 1 << TABLE_BITS
    assert all(w.isalpha() and w.islower() and 2 <= len(w) <= 4 for w in table)
    assert mean == pytest.approx(3.0, abs=0.05)


def test_render_joins_the_words_of_each_token() -> None:
    assert render([7, 8, 7]) == f"{token_word(7)} {token_word(8)} {token_word(7)}"


def test_distinct_consecutive_ids_rarely_share_a_word() -> None:
    words = [token_word(t) for t in range(1 << 20, (1 << 20) + 20_000)]
    same = sum(a == b for a, b in itertools.pairwise(words))
    assert same < 20  # ~1e-4 per pair


@pytest.mark.parametrize("name", SHARING, ids=SHARING)
def test_shared_tokens_render_to_byte_identical_text_and_nothing_more(name: str) -> None:
    """What the sim replica's prefix cache shares (a token prefix) is what the EPP's prefix
    scorer sees shared (a text prefix), to within the word where the prompts diverge."""
    extra = []
    for a, b in _pairs(_requests(name)):
        k = _common_tokens(a.prompt, b.prompt)
        shared = render(a.prompt[:k])
        ta, tb = a.text(), b.text()
        assert ta.startswith(shared)
        assert tb.startswith(shared)
        extra.append(_common(ta, tb) - len(shared))
    assert max(extra) < EPP_CHARS_PER_TOKEN * 2  # a space and at most a short word


@pytest.mark.parametrize("name", SHARING, ids=SHARING)
def test_shared_text_blocks_match_shared_token_blocks_within_10_percent(name: str) -> None:
    """The EPP's shared 64-character blocks against the engine's shared 16-token blocks."""
    pairs = _pairs(_requests(name))
    text_blocks = sum(_common(a.text(), b.text()) // EPP_BLOCK_CHARS for a, b in pairs)
    token_blocks = sum(_common_tokens(a.prompt, b.prompt) // 16 for a, b in pairs)
    assert token_blocks > 0
    assert text_blocks == pytest.approx(token_blocks, rel=0.10)


def test_distinct_system_prompts_differ_in_their_first_block() -> None:
    reqs = _requests("shared-prefix")
    firsts: dict[str, set[str]] = {}
    for r in reqs:
        firsts.setdefault(r.group, set()).add(r.text()[:EPP_BLOCK_CHARS])
    assert all(len(v) == 1 for v in firsts.values())
    assert len({next(iter(v)) for v in firsts.values()}) == len(firsts)
