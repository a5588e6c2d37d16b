"""Through real Envoy: gRPC model servers behind ``vllmgrpc-parser`` and ``vertexai-parser``.

A real Envoy speaking HTTP/2 cleartext to the pool (the InferencePool says ``appProtocol:
kubernetes.io/h2c``), kvroute's EPP (director, scheduler with the prefix-cache scorer) and
three small gRPC model servers on loopback, called with a real gRPC client. vLLM's gRPC engine
and Vertex AI cannot run here, so the servers are grpcio servers written for this test
(``MiniGrpcServer``): they answer vLLM's ``VllmEngine/Generate`` (streamed or not) and Vertex
AI's ``PredictionService/ChatCompletions`` with the messages of kvroute's own schemas and say
which server answered. gRPC servers speak no HTTP/1.1, so their vLLM-shaped ``/metrics`` (an
idle engine) come from one aiohttp server that ``metrics-data-source``'s ``port`` points every
endpoint at (upstream's parameter for metrics served beside the inference port).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from kvroute.app import EppApp
from kvroute.config.extproc_options import ResponseProcessing
from kvroute.gateway.edge import EdgeOptions
from kvroute.gateway.gateway import Gateway
from kvroute.protocol.grpc_wire import MESSAGES

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

V = "vllm.grpc.engine."
GENERATE = "/vllm.grpc.engine.VllmEngine/Generate"
VERTEX_CHAT = "/google.cloud.aiplatform.v1beta1.PredictionService/ChatCompletions"
GenerateRequest = MESSAGES[V + "GenerateRequest"]
GenerateResponse = MESSAGES[V + "GenerateResponse"]
HttpBody = MESSAGES["google.api.HttpBody"]
ChatCompletionsRequest = MESSAGES["google.cloud.aiplatform.v1beta1.ChatCompletionsRequest"]

RESOURCES = """\
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: grpc-pool}
spec:
  selector: {matchLabels: {app: grpc}}
  targetPorts: [{number: 9000}]
  appProtocol: kubernetes.io/h2c
"""

CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: prefix-cache-scorer
- type: max-score-picker
- type: vllmgrpc-parser
- type: vertexai-parser
- {name: metrics, type: metrics-data-source, parameters: {port: METRICS_PORT}}
dataLayer:
  sources: [{pluginRef: metrics}]
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 1}
  - {pluginRef: prefix-cache-scorer, weight: 10}
  - {pluginRef: max-score-picker}
requestHandler:
  parsers: [{pluginRef: vllmgrpc-parser}, {pluginRef: vertexai-parser}]
"""

LONG = "You are a careful assistant who answers questions about the weather. " * 12


def _raw(b: bytes) -> bytes:
    return b


@dataclass
class MiniGrpcServer:
    """One gRPC model server; ``port`` is valid after :meth:`start`."""

    name: str
    port: int = 0
    prompts: list[str] = field(default_factory=list)
    _server: Any = None

    async def _generate(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        req = GenerateRequest.FromString(request)
        self.prompts.append(req.text)
        n = req.sampling_params.max_tokens or 3
        chunk = MESSAGES[V + "GenerateStreamChunk"]
        if req.stream:
            for i in range(n - 1):
                yield GenerateResponse(chunk=chunk(token_ids=[i])).SerializeToString()
            yield GenerateResponse(
                chunk=chunk(token_ids=[n], prompt_tokens=40, completion_tokens=n)
            ).SerializeToString()
        complete = MESSAGES[V + "GenerateComplete"](
            output_ids=list(range(n)),
            finish_reason=self.name,  # which server answered
            prompt_tokens=40,
            completion_tokens=n,
            cached_tokens=8,
        )
        yield GenerateResponse(complete=complete).SerializeToString()

    async def _chat(self, request: bytes, context: Any) -> bytes:
        req = ChatCompletionsRequest.FromString(request)
        body = json.loads(req.http_body.data)
        self.prompts.append(json.dumps(body["messages"]))
        answer = {
            "id": "c1",
            "object": "chat.completion",
            "model": body["model"],
            "server": self.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "sunny"}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34},
        }
        out = HttpBody(content_type="application/json", data=json.dumps(answer).encode())
        return bytes(out.SerializeToString())

    async def start(self) -> None:
        handlers = {
            "vllm.grpc.engine.VllmEngine": {
                "Generate": grpc.unary_stream_rpc_method_handler(
                    self._generate, request_deserializer=_raw, response_serializer=_raw
                )
            },
            "google.cloud.aiplatform.v1beta1.PredictionService": {
                "ChatCompletions": grpc.unary_unary_rpc_method_handler(
                    self._chat, request_deserializer=_raw, response_serializer=_raw
                )
            },
        }
        self._server = grpc.aio.server()
        for service, methods in handlers.items():
            self._server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, methods),)
            )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop(0)


@dataclass
class Stack:
    epp: EppApp
    channel: Any
    servers: list[MiniGrpcServer]

    async def metric(self, name: str, **labels: str) -> float:
        async with httpx.AsyncClient() as c:
            text = (await c.get(f"http://127.0.0.1:{self.epp.ports.metrics}/metrics")).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0


async def _idle_metrics(_request: web.Request) -> web.Response:
    idle = (
        "vllm:num_requests_waiting 0",
        "vllm:num_requests_running 0",
        "vllm:kv_cache_usage_perc 0",
    )
    return web.Response(text="\n".join(idle) + "\n")


@pytest_asyncio.fixture(
    scope="module",
    loop_scope="module",
    # full: upstream's response path, every gRPC frame through the EPP; tap: kvroute serve's
    # default, Envoy's Lua tap reports the (small) response to the EPP
    params=[ResponseProcessing.FULL, ResponseProcessing.TAP],
    ids=["full", "tap"],
)
async def stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[Stack]:
    servers = [MiniGrpcServer(f"grpc-{i}") for i in range(3)]
    for s in servers:
        await s.start()
    app = web.Application()
    app.router.add_get("/metrics", _idle_metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    metrics_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with contextlib.AsyncExitStack() as stack_:
            tmp: Path = tmp_path_factory.mktemp("grpc")
            resources = tmp / "pool.yaml"
            resources.write_text(RESOURCES)
            gw = await stack_.enter_async_context(
                Gateway(
                    [f"http://127.0.0.1:{s.port}" for s in servers],
                    resources=[resources],
                    config_text=CONFIG.replace("METRICS_PORT", str(metrics_port)),
                    log_dir=tmp,
                    response_processing=request.param,
                    edge=EdgeOptions(
                        extra_path_prefixes=(
                            "/vllm.grpc.engine.VllmEngine/",
                            "/google.cloud.aiplatform.v1beta1.PredictionService/",
                        ),
                    ),
                )
            )
            target = gw.url.removeprefix("http://")
            channel = await stack_.enter_async_context(grpc.aio.insecure_channel(target))
            yield Stack(gw.epp, channel, servers)
    finally:
        for s in servers:
            await s.stop()
        await runner.cleanup()


async def _generate(stack: Stack, text: str, stream: bool) -> list[Any]:
    call = stack.channel.unary_stream(
        GENERATE, request_serializer=_raw, response_deserializer=GenerateResponse.FromString
    )
    req = GenerateRequest(request_id="r", text=text, stream=stream)
    req.sampling_params.max_tokens = 5
    return [m async for m in call(req.SerializeToString(), timeout=30)]


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
async def test_vllm_grpc_generate_prefix_affinity_and_usage(stack: Stack, stream: bool) -> None:
    labels = {"model_name": "", "target_model_name": ""}
    before = await stack.metric("inference_objective_output_tokens_sum", **labels)
    served = set()
    for question in ("Rain today?", "Snow tomorrow?", "Wind tonight?"):
        messages = await _generate(stack, LONG + question + str(stream), stream)
        assert messages[-1].WhichOneof("response") == "complete"
        assert messages[-1].complete.completion_tokens == 5  # the server's bytes, intact
        if stream:
            assert [m.WhichOneof("response") for m in messages[:-1]] == ["chunk"] * 5
        served.add(messages[-1].complete.finish_reason)
    assert len(served) == 1, served  # one long shared prefix: one server
    after = await stack.metric("inference_objective_output_tokens_sum", **labels)
    assert after - before == 3 * 5  # usage read from the gRPC response frames


async def test_vertex_chat_completions_prefix_affinity_and_usage(stack: Stack) -> None:
    call = stack.channel.unary_unary(
        VERTEX_CHAT, request_serializer=_raw, response_deserializer=HttpBody.FromString
    )
    labels = {"model_name": "gemma", "target_model_name": "gemma"}
    before = await stack.metric("inference_objective_output_tokens_sum", **labels)
    served = set()
    for question in ("Rain today?", "Snow tomorrow?", "Wind tonight?"):
        req = ChatCompletionsRequest(endpoint="projects/p/locations/l/endpoints/e")
        req.http_body.content_type = "application/json"
        payload = {
            "model": "gemma",
            "messages": [
                {"role": "system", "content": LONG},
                {"role": "user", "content": question},
            ],
        }
        req.http_body.data = json.dumps(payload).encode()
        reply = await call(req.SerializeToString(), timeout=30)
        answer = json.loads(reply.data)
        assert answer["model"] == "gemma"
        assert answer["choices"][0]["message"]["content"] == "sunny"
        served.add(answer["server"])
    assert len(served) == 1, served
    after = await stack.metric("inference_objective_output_tokens_sum", **labels)
    assert after - before == 3 * 4


async def test_malformed_grpc_body_is_refused_and_reaches_no_server(stack: Stack) -> None:
    call = stack.channel.unary_unary(GENERATE, request_serializer=_raw, response_deserializer=_raw)
    before = sum(len(s.prompts) for s in stack.servers)
    with pytest.raises(grpc.aio.AioRpcError):
        await call(b"\xff\xff\xff\xff", timeout=30)  # not a GenerateRequest
    assert sum(len(s.prompts) for s in stack.servers) == before
