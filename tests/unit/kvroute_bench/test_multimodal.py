"""The multimodal bench preset: workload shape, image spans, the routers' bodies, profiles."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from kvroute.config.epp_config import KVROUTE_DEFAULT_CONFIG_TEXT
from kvroute.protocol.openai import parse_request
from kvroute_bench import multimodal as mm
from kvroute_bench.workload import BenchRequest


def test_workload_mix_and_image_spans() -> None:
    reqs = mm.generate(mm.MmSpec(), rate=20, duration=30, seed=1)
    groups = {g: sum(r.group == g for r in reqs) for g in ("text", "image", "followup")}
    assert sum(groups.values()) == len(reqs)
    assert 0.2 < groups["image"] / len(reqs) < 0.45
    assert groups["followup"] > 0
    for r in reqs:
        spans = mm.media_of(r.prompt)
        if r.group == "text":
            assert spans == ()
            continue
        for s in spans:
            k = int(s.key.removeprefix("img"))
            assert r.prompt[s.offset : s.offset + s.tokens] == mm.image_ids(k)
    firsts = [r for r in reqs if r.group == "image"]
    assert all(1 <= len(mm.media_of(r.prompt)) <= 4 for r in firsts)


def test_epp_body_carries_images_in_place_and_the_estimate_matches_the_sim() -> None:
    prompt = (1, 2, *mm.image_ids(3), 4)
    req = BenchRequest("r", 0.0, prompt, 8)
    router = mm.MmEppRouter("kvroute", "default", seed=0)
    router.prepare(req)
    body = json.loads(router._body[1])
    kinds = [p["type"] for p in body["messages"][0]["content"]]
    assert kinds == ["text", "image_url", "text"]
    parsed = parse_request(router._body[1], "/v1/chat/completions")
    (item,) = parsed.media
    assert item.tokens == mm.catalogue_tokens(3)  # kvroute's Qwen rule == the sim's count
    text_only = mm.MmEppRouter("t", "default", seed=0, drop_media=True)
    text_only.prepare(req)
    assert parse_request(text_only._body[1], "/v1/chat/completions").media == ()


def test_pooled_bound_counts_repeats() -> None:
    a = mm.image_ids(0)
    reqs = [BenchRequest(f"r{i}", float(i), (1, *a), 4) for i in range(4)]
    assert mm.pooled_reuse(reqs, capacity=8) == 0.75


def test_no_mm_profile_is_the_default_minus_the_scorer() -> None:
    shipped = yaml.safe_load(Path(mm.NO_MM_CONFIG).read_text())
    default = yaml.safe_load(KVROUTE_DEFAULT_CONFIG_TEXT)
    default["plugins"] = [
        p for p in default["plugins"] if p["type"] != "mm-embeddings-cache-scorer"
    ]
    prof = default["schedulingProfiles"][0]
    prof["plugins"] = [p for p in prof["plugins"] if p["pluginRef"] != "mm-embeddings-cache-scorer"]
    assert shipped == default
