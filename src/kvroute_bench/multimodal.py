"""The multimodal preset (issue 14): images from a Zipf catalogue on a vision-language pool.

Run (virtual time; figures in ``docs/benchmarks.md``, "Multimodal (issue 14)")::

    PYTHONPATH=src .venv/bin/python -m kvroute_bench.multimodal --qps 6 --duration 120

Workload: ``--mm-fraction`` (40 %) of conversations carry 1-4 images drawn Zipf(``--zipf``)
from a catalogue of ``--catalogue`` images of four sizes (448x448 to 1344x896: 258-1,538
tokens under Qwen2.5-VL's rule); the rest are text. Every request starts with one of 8 system
prompts (300 tokens). Half the users put the question before the images, half after, so two
questions about one image share their prefix only up to the question in the first half: only
the image's hash can bring them together. ``--followups`` (30 %) of arrivals continue an
earlier image conversation (its whole history plus a new question: multi-turn about the same
image). Lengths: questions lognormal mean 80 tokens, answers mean 150.

Pool: ``--replicas`` (4) simulated servers on the ``vision`` profile (:mod:`kvroute_sim.vision`:
calibrated H100 language model, 15 us of encoder per image token, an encoder cache of
``--encoder-cache`` items per server). Image tokens are ids derived from the image, so the
engines' prefix caches hold image blocks exactly when they saw the image at that position.

Policies: ``round-robin``; ``text-only-prefix``, kvroute's default profile shown a body with
the images removed (what a prefix router that hashes only text parts sees); ``kvroute``, the
default profile on the real multimodal body (images as PNG data URLs: content-hashed, sized from
their headers, padded placeholders in the prefix chain, ``mm-embeddings-cache-scorer``);
``kvroute-no-mm-scorer``, the same without that scorer. Reported per policy: TTFT p50/p90, and
the share of image occurrences that needed no encoder run (encoder cache hit or prefix hit),
next to the pooled bound: one shared encoder cache of the pool's total size over the same
arrivals (a ceiling for any routing).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import random
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvroute.embed import parse_request
from kvroute.sdk import EppError
from kvroute_bench.arrivals import arrival_times
from kvroute_bench.baselines import BASELINES, Router
from kvroute_bench.cluster import RunConfig, run_stage
from kvroute_bench.epp_router import CRITICALITY_HEADER, EppRouter
from kvroute_bench.pool import PoolView
from kvroute_bench.sim_replica import SimReplica, replica_config, step_costs
from kvroute_bench.workload import BenchRequest
from kvroute_sim.vision import IMAGE_TOKEN_BASE, EncoderCache, MediaSpan, image_tokens

IMAGE_STRIDE = 1 << 14  # token ids per catalogue image: IMAGE_TOKEN_BASE + k * stride + j
SIZES = ((448, 448), (672, 672), (896, 672), (1344, 896))
MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
POLICIES = ("round-robin", "text-only-prefix", "kvroute", "kvroute-no-mm-scorer")


@dataclass(frozen=True, slots=True)
class MmSpec:
    catalogue: int = 300
    zipf: float = 1.1
    mm_fraction: float = 0.4
    max_images: int = 4
    followups: float = 0.3
    systems: int = 8
    system_len: int = 300
    question_mean: float = 80.0
    output_mean: float = 150.0


def catalogue_tokens(k: int) -> int:
    w, h = SIZES[k % len(SIZES)]
    return image_tokens(w, h)


def image_ids(k: int) -> tuple[int, ...]:
    base = IMAGE_TOKEN_BASE + k * IMAGE_STRIDE
    return tuple(range(base, base + catalogue_tokens(k)))


def media_of(prompt: Sequence[int]) -> tuple[MediaSpan, ...]:
    """The image spans of a prompt built here (runs of one image's token ids)."""
    out: list[MediaSpan] = []
    i, n = 0, len(prompt)
    while i < n:
        t = prompt[i]
        if t < IMAGE_TOKEN_BASE:
            i += 1
            continue
        k = (t - IMAGE_TOKEN_BASE) // IMAGE_STRIDE
        length = catalogue_tokens(k)
        out.append(MediaSpan(f"img{k}", i, length))
        i += length
    return tuple(out)


def _lognormal(rng: random.Random, mean: float, lo: int = 4, hi: int = 2048) -> int:
    sigma = 0.8
    mu = math.log(mean) - sigma**2 / 2
    return max(lo, min(hi, int(rng.lognormvariate(mu, sigma))))


def generate(spec: MmSpec, *, rate: float, duration: float, seed: int) -> list[BenchRequest]:
    times = arrival_times(
        random.Random(seed * 7919 + 1), rate=rate, duration=duration, process="poisson", shape=1.0
    )
    rng = random.Random(seed)
    next_id = [1 << 20]

    def unique(n: int) -> tuple[int, ...]:
        start = next_id[0]
        next_id[0] += n
        return tuple(range(start, start + n))

    systems = [unique(spec.system_len) for _ in range(spec.systems)]
    raw = [1.0 / (k + 1) ** spec.zipf for k in range(spec.catalogue)]
    total = sum(raw)
    weights = [w / total for w in raw]
    open_convs: list[tuple[int, ...]] = []
    out: list[BenchRequest] = []
    for i, t in enumerate(times):
        n_out = _lognormal(rng, spec.output_mean, hi=1024)
        question = unique(_lognormal(rng, spec.question_mean, hi=1024))
        if open_convs and rng.random() < spec.followups:
            j = rng.randrange(len(open_convs))
            prompt = open_convs[j] + question
            open_convs[j] = prompt + unique(n_out)
            group = "followup"
        elif rng.random() < spec.mm_fraction:
            n_img = rng.randint(1, spec.max_images)
            images: tuple[int, ...] = ()
            for k in rng.choices(range(spec.catalogue), weights, k=n_img):
                images += image_ids(k)
            system = systems[rng.randrange(spec.systems)]
            if rng.random() < 0.5:
                prompt = system + images + question
            else:
                prompt = system + question + images
            open_convs.append(prompt + unique(n_out))
            if len(open_convs) > 200:
                open_convs.pop(0)
            group = "image"
        else:
            prompt = systems[rng.randrange(spec.systems)] + question
            group = "text"
        out.append(BenchRequest(f"r{i}", t, prompt, n_out, group=group))
    return out


# --- kvroute with a multimodal body -----------------------------------------------------------


def _png_url(k: int) -> str:
    w, h = SIZES[k % len(SIZES)]
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    raw += f"catalogue image {k}".encode() * 8
    return "data:image/png;base64," + base64.b64encode(raw).decode()


class MmEppRouter(EppRouter):
    """kvroute's director on an OpenAI chat body: text parts and PNG data-URL image parts in
    prompt order; ``drop_media`` sends the text parts only (a text-only prefix router's view)."""

    def __init__(self, name: str, config: str, *, seed: int, drop_media: bool = False) -> None:
        super().__init__(name, config, seed=seed)
        self.drop_media = drop_media
        self._urls: dict[int, str] = {}

    def prepare(self, request: BenchRequest) -> None:
        parts: list[dict[str, object]] = []
        words: list[str] = []
        prompt = request.prompt
        i = 0
        while i < len(prompt):
            tok = prompt[i]
            if tok < IMAGE_TOKEN_BASE:
                words.append(f"w{tok}")
                i += 1
                continue
            k = (tok - IMAGE_TOKEN_BASE) // IMAGE_STRIDE
            i += catalogue_tokens(k)
            if words:
                parts.append({"type": "text", "text": " ".join(words) + " "})
                words = []
            if not self.drop_media:
                url = self._urls.get(k) or self._urls.setdefault(k, _png_url(k))
                parts.append({"type": "image_url", "image_url": {"url": url}})
        if words:
            parts.append({"type": "text", "text": " ".join(words)})
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": parts}],
            "max_tokens": request.output_len,
            "stream": True,
        }
        self._body = (request.request_id, json.dumps(body).encode())

    def pick(self, request: BenchRequest, pool: PoolView, now: float) -> int | None:
        self.now = now
        self._mirror(pool)
        if self._body[0] != request.request_id:
            self.prepare(request)
        headers = {CRITICALITY_HEADER: request.criticality.value}
        try:
            parsed = parse_request(self._body[1], "/v1/chat/completions")
            decision = self.director.handle_request(parsed, headers, request.request_id)
        except EppError:
            return None
        self._decisions[request.request_id] = decision
        return self._index[decision.target.name]


NO_MM_CONFIG = Path(__file__).parent / "profiles/default-no-mm-scorer.yaml"


def make_router(policy: str, seed: int) -> Router:
    if policy in BASELINES:
        return BASELINES[policy](seed)
    if policy == "text-only-prefix":
        return MmEppRouter(policy, "default", seed=seed, drop_media=True)
    if policy == "kvroute":
        return MmEppRouter(policy, "default", seed=seed)
    if policy == "kvroute-no-mm-scorer":
        return MmEppRouter(policy, str(NO_MM_CONFIG), seed=seed)
    if policy.startswith("config:"):  # any EndpointPickerConfig file, on the multimodal body
        return MmEppRouter(policy, policy.removeprefix("config:"), seed=seed)
    raise ValueError(f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")


class _MmReplica(SimReplica):
    """A SimReplica whose requests carry their image spans (encoder time, encoder cache)."""

    def add(self, request: BenchRequest, now: float) -> bool:
        from kvroute_sim.engine import RequestRejected, SimRequest

        sim = SimRequest(
            request.request_id,
            prompt_token_ids=request.prompt,
            max_tokens=request.output_len,
            arrival_time=now,
            media=media_of(request.prompt),
        )
        try:
            self.engine.add_request(sim)
        except RequestRejected:
            return False
        self._inflight[request.request_id] = sim
        return True


def pooled_reuse(requests: Sequence[BenchRequest], capacity: int) -> float:
    """Share of image occurrences a single shared encoder cache of ``capacity`` items serves."""
    cache = EncoderCache(capacity)
    for r in requests:
        cache.encode_time(media_of(r.prompt), 0, 0.0)
    return cache.hits / cache.queries if cache.queries else 0.0


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--qps", type=float, nargs="+", default=[6.0])
    p.add_argument("--duration", type=float, default=120.0)
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--encoder-cache", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policies", nargs="+", default=list(POLICIES))
    args = p.parse_args(argv)
    spec = MmSpec()
    cfg = replica_config("vision", {"encoder_cache_items": args.encoder_cache})
    print(
        "| QPS | policy | TTFT p50 (s) | TTFT p90 (s) | completed | images needing no encoder "
        "| pooled bound |"
    )
    print("|---|---|---|---|---|---|---|")
    for qps in args.qps:
        requests = generate(spec, rate=qps, duration=args.duration, seed=args.seed)
        items = sum(len(media_of(r.prompt)) for r in requests)
        bound = pooled_reuse(requests, args.encoder_cache * args.replicas)
        for policy in args.policies:
            engines = [_MmReplica(cfg) for _ in range(args.replicas)]
            result = run_stage(
                requests,
                engines,
                make_router(policy, args.seed),
                offered_qps=qps,
                duration=args.duration,
                config=RunConfig(),
                costs=step_costs(cfg),
            )
            encodes = sum(
                e.engine.encoder_cache.queries - e.engine.encoder_cache.hits for e in engines
            )
            m = result.metrics
            print(
                f"| {qps:g} | {policy} | {m.ttft_p50:.3f} | {m.ttft_p90:.3f} | {m.completed} "
                f"| {1 - encodes / items:.1%} | {bound:.1%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
