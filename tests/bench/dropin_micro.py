"""Issue 18 costs: ``approx-prefix-cache-producer`` PrepareData with upstream v0.10's defaults
against the defaults it had before (GIE v1.5's: 256 blocks, 16-token blocks), the parse cost of
the two gRPC parsers next to the OpenAI parser on the same prompt, and the director's serving
entry point (``handle_request_async``) with ``token-producer``'s ``vllm`` backend (a render
call to ``kvroute sim`` on loopback) against the estimate backend.

Run: ``PYTHONPATH=src .venv/bin/python -m tests.bench.dropin_micro`` (figures in
docs/benchmarks.md, "Drop-in, second round"). Best of 5 repeats, wall time per call, the
variants interleaved in each repeat; 8 endpoints of 16-token KV blocks, index warm.
"""

from __future__ import annotations

import asyncio
import json
import time
import timeit

from kvroute.datastore.endpoint import Endpoint, EndpointMetrics
from kvroute.protocol.grpc_wire import MESSAGES, frame
from kvroute.protocol.parsers import ParserSet
from kvroute.scheduling.interfaces import CycleState
from kvroute.scheduling.plugins.prefix.approximate import (
    PrefixCacheParams,
    PrefixCacheScorer,
    ProducerParams,
)
from kvroute.scheduling.request import InferenceRequest

ENDPOINTS = [
    Endpoint(
        name=f"e{i}",
        address=f"10.0.0.{i + 1}",
        port=8000,
        metrics=EndpointMetrics(cache_block_size=16, cache_num_blocks=10000, updated_at=1.0),
    )
    for i in range(8)
]


def _producers() -> dict[str, PrefixCacheScorer]:
    return {
        "before (256 blocks, 16-token blocks)": PrefixCacheScorer(
            "p", PrefixCacheParams(), type_name="approx-prefix-cache-producer"
        ),
        "upstream v0.10 (131072 tokens, >= 64-token blocks)": PrefixCacheScorer(
            "p", ProducerParams(), type_name="approx-prefix-cache-producer"
        ),
    }


def _bench_producer() -> None:
    producers = _producers()
    for chars in (8_000, 64_000, 400_000):
        prompt = ("You are a helpful assistant with tools. " * (chars // 40 + 1))[:chars]
        req = InferenceRequest(
            request_id="r", incoming_model="m", target_model="m", prompt_text=prompt
        )
        for p in producers.values():  # warm: endpoint e0 holds the whole prefix
            p.index.add("e0", p.hash_request(req, ENDPOINTS)[1])
        best: dict[str, float] = dict.fromkeys(producers, float("inf"))
        for _ in range(5):
            for name, p in producers.items():
                n = 200
                t = timeit.timeit(
                    lambda p=p, r=req: p.prepare_data(CycleState(now=1.0), r, ENDPOINTS), number=n
                )
                best[name] = min(best[name], t / n)
        for name, p in producers.items():
            blocks = len(p.hash_request(req, ENDPOINTS)[1])
            print(
                f"producer {chars:>7} chars  {name:<52} {best[name] * 1e6:8.1f} us  {blocks} blocks"
            )


def _bench_parsers() -> None:
    system = "You are a helpful assistant. " * 200
    chat = {
        "model": "m",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
    }
    chat_json = json.dumps(chat).encode()
    vertex = MESSAGES["google.cloud.aiplatform.v1beta1.ChatCompletionsRequest"](endpoint="e")
    vertex.http_body.data = chat_json
    gen = MESSAGES["vllm.grpc.engine.GenerateRequest"](text=system + "hi", stream=True)
    tok = MESSAGES["vllm.grpc.engine.GenerateRequest"]()
    tok.tokenized.input_ids.extend(range(2000))
    cases = [
        ("openai chat (JSON)", chat_json, "/v1/chat/completions"),
        (
            "vertexai ChatCompletions",
            frame(vertex.SerializeToString()),
            "/google.cloud.aiplatform.v1beta1.PredictionService/ChatCompletions",
        ),
        (
            "vllmgrpc Generate text",
            frame(gen.SerializeToString()),
            "/vllm.grpc.engine.VllmEngine/Generate",
        ),
        (
            "vllmgrpc Generate 2000 ids",
            frame(tok.SerializeToString()),
            "/vllm.grpc.engine.VllmEngine/Generate",
        ),
    ]
    parsers = ParserSet(["openai-parser", "vertexai-parser", "vllmgrpc-parser"])
    best = {name: float("inf") for name, _, _ in cases}
    for _ in range(5):
        for name, body, path in cases:
            n = 2000
            t = timeit.timeit(lambda b=body, p=path: parsers.parse_request(b, p), number=n)
            best[name] = min(best[name], t / n)
    for name, body, _ in cases:
        print(f"parse  {name:<28} {len(body):>6} B  {best[name] * 1e6:7.1f} us")


_RENDER_CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: token-producer
  parameters: PARAMS
- type: approx-prefix-cache-producer
- type: prefix-cache-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: prefix-cache-scorer, weight: 1}
  - {pluginRef: max-score-picker}
"""


async def _bench_render() -> None:
    from kvroute.config.epp_config import parse_epp_config
    from kvroute.datastore.store import Datastore
    from kvroute.protocol.openai import parse_request
    from kvroute.wiring import build_epp
    from kvroute_sim.cluster import SimCluster

    system = "You are a careful assistant who answers questions about the weather. " * 40
    async with SimCluster(1, profile="tiny", model="base") as cluster:
        graphs = {}
        for name, params in (
            ("estimate backend", "{}"),
            (
                "vllm backend (render on loopback)",
                f"{{modelName: base, vllm: {{url: '{cluster.urls[0]}'}}}}",
            ),
        ):
            store = Datastore()
            for i in range(8):
                store.upsert_endpoint(f"e{i}", f"10.0.0.{i + 1}", 8000)
                store.update_metrics(f"e{i}", EndpointMetrics(updated_at=1e12))
            text = _RENDER_CONFIG.replace("PARAMS", params)
            graphs[name] = build_epp(parse_epp_config(text, "r.yaml"), store)
        best = dict.fromkeys(graphs, float("inf"))
        for _ in range(5):
            for name, graph in graphs.items():
                n = 100
                start = time.perf_counter()
                for i in range(n):
                    body = {
                        "model": "base",
                        "max_tokens": 4,
                        "messages": [
                            {"role": "system", "content": system},
                            {"role": "user", "content": f"question {i}"},
                        ],
                    }
                    parsed = parse_request(json.dumps(body).encode(), "/v1/chat/completions")
                    d = await graph.director.handle_request_async(parsed, {}, f"r{i}")
                    graph.director.handle_response_complete(d, None)
                best[name] = min(best[name], (time.perf_counter() - start) / n)
        for name in graphs:
            print(f"route  {name:<36} {best[name] * 1e6:8.1f} us per request")


def main() -> None:
    _bench_producer()
    _bench_parsers()
    asyncio.run(_bench_render())


if __name__ == "__main__":
    main()
