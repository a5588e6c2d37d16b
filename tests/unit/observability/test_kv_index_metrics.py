"""``llm_d_epp_kv_cache_index_*`` read from real precise producers on a real registry scrape."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kvroute.datalayer.tokenization import PromptTokenizer
from kvroute.observability.kv_index_metrics import register_kv_index_metrics
from tests.unit.datalayer.test_tokenization import write_tokenizer_dir
from tests.unit.scheduling.plugins.prefix.test_precise_producer import (
    PROMPT,
    cycle_with_tokens,
    ep,
    producer,
    store_blocks,
)


def _scrape(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {
        s.name: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith("llm_d_epp_kv_cache_index_") and s.name.endswith("_total")
    }


def test_enabled_producers_are_summed_on_scrape(tmp_path: Path) -> None:
    tok = PromptTokenizer.from_directory(write_tokenizer_dir(tmp_path / "tok"))
    ids = list(tok.encode_text(PROMPT))
    enabled = [
        producer(indexerConfig={"kvBlockIndexConfig": {"enableMetrics": True}}) for _ in range(2)
    ]
    disabled = producer()
    a = ep("a")
    for p in [*enabled, disabled]:
        p.token_source = "token-producer"
        store_blocks(p, a, ids[:12])  # 3 blocks of 4 tokens
        cycle_with_tokens(p, [a], ids)
    registry = CollectorRegistry()
    assert register_kv_index_metrics(registry, [*enabled, disabled])
    assert _scrape(registry) == {
        "llm_d_epp_kv_cache_index_admissions_total": 6.0,
        "llm_d_epp_kv_cache_index_evictions_total": 0.0,
        "llm_d_epp_kv_cache_index_lookup_requests_total": 2.0,
        "llm_d_epp_kv_cache_index_lookup_hits_total": 6.0,
    }
    cycle_with_tokens(enabled[0], [a], ids)  # read live on every scrape
    assert _scrape(registry)["llm_d_epp_kv_cache_index_lookup_requests_total"] == 3.0


def test_not_registered_without_enable_metrics() -> None:
    registry = CollectorRegistry()
    assert not register_kv_index_metrics(registry, [producer()])
    assert _scrape(registry) == {}
