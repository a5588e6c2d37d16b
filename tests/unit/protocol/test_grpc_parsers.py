"""The gRPC parsers (``vllmgrpc-parser``, ``vertexai-parser``) and the gRPC framing they read.

Messages are built with kvroute's own schemas (``kvroute.protocol.grpc_wire``) and checked on
the wire bytes as well, so a wrong field number in a schema shows up as a wrong byte, not only
as a round trip that agrees with itself.
"""

from __future__ import annotations

import json

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datastore.store import Datastore
from kvroute.errors import BadRequestError, ConfigError
from kvroute.extproc.response_filter import OpenAIResponseFilter
from kvroute.framework.request import openai_shape
from kvroute.protocol.grpc_wire import MESSAGES, FrameReader, first_message, frame
from kvroute.protocol.parsers import ParserSet, body_usage, stream_usage
from kvroute.scheduling.plugins.prefix.hashing import request_input_bytes
from kvroute.scheduling.request import ApiKind, InferenceRequest
from kvroute.wiring import build_epp

GEN = "/vllm.grpc.engine.VllmEngine/Generate"
EMBED = "/vllm.grpc.engine.VllmEngine/Embed"
CHAT = "/google.cloud.aiplatform.v1beta1.PredictionService/ChatCompletions"
RAW = "/google.cloud.aiplatform.v1beta1.PredictionService/RawPredict"
STREAM_RAW = "/google.cloud.aiplatform.v1beta1.PredictionService/StreamRawPredict"
V = "vllm.grpc.engine."
A = "google.cloud.aiplatform.v1beta1."
PARSERS = ParserSet(["vllmgrpc-parser", "vertexai-parser"])


def _generate(**fields: object) -> bytes:
    req = MESSAGES[V + "GenerateRequest"](**fields)
    return frame(req.SerializeToString())


def _vertex(message: str, payload: object) -> bytes:
    req = MESSAGES[A + message](endpoint="projects/p/locations/l/endpoints/e")
    req.http_body.content_type = "application/json"
    req.http_body.data = json.dumps(payload).encode()
    return frame(req.SerializeToString())


# -- framing -----------------------------------------------------------------------------------


def test_frame_layout_and_first_message() -> None:
    assert frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert first_message(frame(b"abc") + frame(b"zz"), "x") == b"abc"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"\x00\x00", "5-byte header"),
        (b"\x01\x00\x00\x00\x01a", "compressed"),
        (b"\x00\x00\x00\x00\x09abc", "announces 9 bytes, only 3"),
        (b"\x07\x00\x00\x00\x00", "frame flag"),
    ],
)
def test_bad_framing_is_a_400_naming_the_problem(body: bytes, needle: str) -> None:
    with pytest.raises(BadRequestError, match=needle):
        PARSERS.parse_request(body, GEN)


def test_frame_reader_splits_messages_across_chunks() -> None:
    data = frame(b"one") + frame(b"") + frame(b"three")
    reader = FrameReader()
    got = [m for i in range(len(data)) for m in reader.feed(data[i : i + 1])]
    assert got == [b"one", b"", b"three"]
    assert reader.feed(b"\x01junk") == []
    assert reader.broken


# -- vllmgrpc ----------------------------------------------------------------------------------


def test_schema_field_numbers_on_the_wire() -> None:
    req = MESSAGES[V + "GenerateRequest"](request_id="r", text="hi", stream=True)
    req.sampling_params.max_tokens = 7
    # 1:"r" (0x0a), 3:"hi" (0x1a), 4:{8: 7} (0x22 02 40 07), 5:true (0x28 01)
    assert req.SerializeToString() == b'\x0a\x01r\x1a\x02hi"\x02@\x07(\x01'
    tok = MESSAGES[V + "GenerateRequest"]()
    tok.tokenized.input_ids.extend([1, 300])
    assert tok.SerializeToString() == b"\x12\x05\x12\x03\x01\xac\x02"  # 2:{2: packed [1, 300]}


def test_generate_text_request() -> None:
    sp = MESSAGES[V + "SamplingParams"](max_tokens=0)
    parsed = PARSERS.parse_request(
        _generate(request_id="r1", text="hello world", stream=True, sampling_params=sp), GEN
    )
    assert parsed.api is ApiKind.VLLM_GRPC_GENERATE
    assert (parsed.model, parsed.prompt_text, parsed.stream) == ("", "hello world", True)
    assert parsed.max_tokens == 0  # explicit 0 kept, distinct from unset
    assert PARSERS.rewrite_request_body(parsed, "other") == parsed.raw  # body never touched


def test_generate_tokenized_request_and_unset_max_tokens() -> None:
    tokenized = MESSAGES[V + "TokenizedInput"](original_text="x", input_ids=[5, 6, 7])
    parsed = PARSERS.parse_request(_generate(tokenized=tokenized), GEN + "?q=1")
    assert (parsed.prompt_text, parsed.max_tokens, parsed.stream) == ("5 6 7", None, False)


def test_generate_without_input_and_garbage_are_400s() -> None:
    with pytest.raises(BadRequestError, match="no input"):
        PARSERS.parse_request(_generate(request_id="r"), GEN)
    with pytest.raises(BadRequestError, match="invalid GenerateRequest"):
        PARSERS.parse_request(frame(b"\xff\xff\xff"), GEN)


def test_embed_request() -> None:
    req = MESSAGES[V + "EmbedRequest"](request_id="e")
    req.tokenized.input_ids.extend([9, 8])
    parsed = PARSERS.parse_request(frame(req.SerializeToString()), EMBED)
    assert (parsed.api, parsed.prompt_text) == (ApiKind.VLLM_GRPC_EMBED, "9 8")
    with pytest.raises(BadRequestError, match="missing tokenized input"):
        PARSERS.parse_request(frame(MESSAGES[V + "EmbedRequest"]().SerializeToString()), EMBED)


def _response(**fields: object) -> bytes:
    return frame(MESSAGES[V + "GenerateResponse"](**fields).SerializeToString())


def test_generate_stream_usage_is_the_last_counted_message() -> None:
    chunk = MESSAGES[V + "GenerateStreamChunk"]
    complete = MESSAGES[V + "GenerateComplete"]
    body = (
        _response(chunk=chunk(token_ids=[1]))  # no counts yet
        + _response(chunk=chunk(token_ids=[2], prompt_tokens=10, completion_tokens=2))
        + _response(
            complete=complete(
                finish_reason="stop", prompt_tokens=10, completion_tokens=3, cached_tokens=4
            )
        )
    )
    parser = stream_usage(ApiKind.VLLM_GRPC_GENERATE)
    for i in range(0, len(body), 3):
        parser.feed(body[i : i + 3])
    usage = parser.finish()
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (10, 3, 4)
    whole = body_usage(ApiKind.VLLM_GRPC_GENERATE, body)
    assert whole is not None
    assert whole.completion_tokens == 3


def test_embed_usage() -> None:
    resp = MESSAGES[V + "EmbedResponse"](embedding=[0.5], prompt_tokens=12, embedding_dim=1)
    usage = body_usage(ApiKind.VLLM_GRPC_EMBED, frame(resp.SerializeToString()))
    assert usage is not None
    assert usage.prompt_tokens == 12


# -- vertexai ----------------------------------------------------------------------------------


def test_vertex_chat_delegates_to_the_openai_parser() -> None:
    payload = {"model": "gemma", "messages": [{"role": "user", "content": "hi"}]}
    parsed = PARSERS.parse_request(_vertex("ChatCompletionsRequest", payload), CHAT)
    assert parsed.api is ApiKind.VERTEX_CHAT_COMPLETIONS
    assert openai_shape(parsed.api) is ApiKind.CHAT_COMPLETIONS
    assert parsed.model == "gemma"
    assert "hi" in parsed.prompt_text
    assert parsed.raw[:1] == b"\x00"  # the gRPC body, forwarded as is
    assert PARSERS.rewrite_request_body(parsed, "other") == parsed.raw
    # prefix hashing reads the JSON inside exactly as for an OpenAI chat request
    req = InferenceRequest(
        request_id="r",
        incoming_model="gemma",
        target_model="gemma",
        api=parsed.api,
        body=parsed.body,
        prompt_text=parsed.prompt_text,
    )
    plain = InferenceRequest(
        request_id="r",
        incoming_model="gemma",
        target_model="gemma",
        api=ApiKind.CHAT_COMPLETIONS,
        body=payload,
        prompt_text=parsed.prompt_text,
    )
    assert request_input_bytes(req) == request_input_bytes(plain)


@pytest.mark.parametrize(
    ("path", "message"), [(RAW, "RawPredictRequest"), (STREAM_RAW, "StreamRawPredictRequest")]
)
def test_vertex_raw_predict_is_a_responses_body(path: str, message: str) -> None:
    parsed = PARSERS.parse_request(_vertex(message, {"model": "m", "input": "tell me"}), path)
    assert openai_shape(parsed.api) is ApiKind.RESPONSES
    assert "tell me" in parsed.prompt_text


def test_vertex_errors_name_the_message() -> None:
    with pytest.raises(BadRequestError, match=r"ChatCompletionsRequest: .*model"):
        PARSERS.parse_request(_vertex("ChatCompletionsRequest", {"messages": []}), CHAT)
    empty = frame(MESSAGES[A + "RawPredictRequest"](endpoint="e").SerializeToString())
    with pytest.raises(BadRequestError, match="RawPredictRequest: it has no HttpBody"):
        PARSERS.parse_request(empty, RAW)


def _http_body(data: bytes) -> bytes:
    return frame(MESSAGES["google.api.HttpBody"](data=data).SerializeToString())


def test_vertex_usage_json_and_sse() -> None:
    doc = {"usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}}
    usage = body_usage(ApiKind.VERTEX_CHAT_COMPLETIONS, _http_body(json.dumps(doc).encode()))
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, 2)
    events = _http_body(b'data: {"choices": []}\n\n') + _http_body(
        b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}\n\n'
    )
    parser = stream_usage(ApiKind.VERTEX_CHAT_COMPLETIONS)
    parser.feed(events)
    assert parser.usage is not None
    assert parser.usage.prompt_tokens == 5


def test_response_filter_passes_grpc_bytes_and_never_restores_the_model() -> None:
    body = _http_body(json.dumps({"model": "target-model", "usage": {"prompt_tokens": 3}}).encode())
    filt = OpenAIResponseFilter(
        "client-model", "target-model", True, ApiKind.VERTEX_CHAT_COMPLETIONS
    )
    assert filt.feed(body, False) == body  # a byte replace would break the frame length
    assert filt.usage is not None
    assert filt.usage.prompt_tokens == 3


@pytest.mark.parametrize("kind", ["vertexai-parser", "vllmgrpc-parser"])
def test_config_of_upstreams_readme_shape_builds_the_parser(kind: str) -> None:
    """Our own config of the shape of upstream's parser READMEs: declared plugin + pluginRef."""
    text = (
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        f"requestHandler:\n  parsers:\n  - pluginRef: {kind}\n"
        f"plugins:\n  - name: {kind}\n    type: {kind}\n"
    )
    epp = build_epp(parse_epp_config(text, "readme.yaml"), Datastore())
    assert epp.setup.parsers.names == (kind,)
    with pytest.raises(ConfigError, match="takes no parameters"):
        build_epp(parse_epp_config(text + "    parameters: {x: 1}\n", "r.yaml"), Datastore())
