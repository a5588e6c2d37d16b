"""gRPC over HTTP/2 bodies (sans-IO): the length-prefixed message framing, and the protobuf
schemas of the two gRPC APIs kvroute's parsers read (``vllmgrpc-parser``, ``vertexai-parser``).

A gRPC body is a sequence of messages, each framed as one flag byte (1 = compressed), a 4-byte
big-endian length and the message bytes. :func:`first_message` reads a request body (unary and
server-streaming calls carry one request message; what follows is ignored, as upstream's
``ParseGrpcPayload``); :class:`FrameReader` splits a response body fed chunk by chunk.
Compressed messages are refused: kvroute does not negotiate ``grpc-encoding``.

The schemas are written here from the published ``.proto`` facts (no generated code, no
``protoc``): the messages are built as ``FileDescriptorProto`` objects in a private descriptor
pool, so they never clash with another copy of the same names in the process (e.g.
``google.api.HttpBody`` from ``googleapis-common-protos``). Only the fields routing reads are
declared; every other field is kept as an unknown field by the protobuf runtime and the body is
forwarded byte for byte anyway.

* ``vllm.grpc.engine`` (vLLM's gRPC engine API, ``vllm_engine.proto``): ``GenerateRequest``
  {``request_id`` 1, oneof input {``tokenized`` 2: ``TokenizedInput`` {``original_text`` 1,
  ``input_ids`` 2}, ``text`` 3}, ``sampling_params`` 4: {optional ``max_tokens`` 8},
  ``stream`` 5, ``mm_inputs`` 7: {``mm_placeholders`` 5: [{``offset`` 1, ``length`` 2}],
  ``mm_hashes`` 6}}; ``GenerateResponse`` {oneof {``chunk`` 1: {``token_ids`` 1,
  ``prompt_tokens`` 2, ``completion_tokens`` 3, ``cached_tokens`` 4}, ``complete`` 2:
  {``output_ids`` 1, ``finish_reason`` 2, ``prompt_tokens`` 3, ``completion_tokens`` 4,
  ``cached_tokens`` 5}}}; ``EmbedRequest`` {``request_id`` 1, ``tokenized`` 2};
  ``EmbedResponse`` {``embedding`` 1, ``prompt_tokens`` 2, ``embedding_dim`` 3}.
* ``google.api.HttpBody`` {``content_type`` 1, ``data`` 2} and Vertex AI's
  ``google.cloud.aiplatform.v1beta1`` ``ChatCompletionsRequest``, ``RawPredictRequest``,
  ``StreamRawPredictRequest`` {``endpoint`` 1, ``http_body`` 2}.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from kvroute.errors import BadRequestError

__all__ = ["MESSAGES", "FrameReader", "first_message", "frame"]

_HEADER = 5
_F = descriptor_pb2.FieldDescriptorProto


def first_message(body: bytes, api: str) -> bytes:
    """The first message of a gRPC body; a 400 naming ``api`` when the framing is wrong."""
    if len(body) < _HEADER:
        raise BadRequestError(
            f"invalid {api} request: a gRPC message needs a 5-byte header, got {len(body)} bytes"
        )
    if body[0] == 1:
        raise BadRequestError(f"invalid {api} request: compressed gRPC messages are not supported")
    if body[0] != 0:
        raise BadRequestError(f"invalid {api} request: bad gRPC frame flag {body[0]}")
    size = int.from_bytes(body[1:5], "big")
    if len(body) < _HEADER + size:
        raise BadRequestError(
            f"invalid {api} request: the gRPC header announces {size} bytes, only "
            f"{len(body) - _HEADER} arrived"
        )
    return body[_HEADER : _HEADER + size]


def frame(message: bytes) -> bytes:
    """``message`` as one uncompressed gRPC frame."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


class FrameReader:
    """Splits a gRPC body fed in arbitrary chunks into messages; a bad frame stops it."""

    __slots__ = ("_buf", "broken")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.broken = False

    def feed(self, chunk: bytes) -> list[bytes]:
        if self.broken:
            return []
        self._buf += chunk
        out: list[bytes] = []
        buf = self._buf
        while len(buf) >= _HEADER:
            if buf[0] != 0:  # compressed or not gRPC: nothing further can be read
                self.broken = True
                buf.clear()
                break
            size = int.from_bytes(buf[1:5], "big")
            if len(buf) < _HEADER + size:
                break
            out.append(bytes(buf[_HEADER : _HEADER + size]))
            del buf[: _HEADER + size]
        return out


# --- schemas ----------------------------------------------------------------------------------


def _field(
    name: str,
    number: int,
    kind: int,
    *,
    type_name: str = "",
    repeated: bool = False,
    oneof: int | None = None,
    proto3_optional: bool = False,
) -> _F:
    f = _F(
        name=name,
        number=number,
        type=kind,  # type: ignore[arg-type]
        label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
    )
    if type_name:
        f.type_name = type_name
    if oneof is not None:
        f.oneof_index = oneof
    if proto3_optional:
        f.proto3_optional = True
    return f


def _message(
    name: str, fields: list[_F], oneofs: tuple[str, ...] = ()
) -> descriptor_pb2.DescriptorProto:
    m = descriptor_pb2.DescriptorProto(name=name)
    m.field.extend(fields)
    for o in oneofs:
        m.oneof_decl.add(name=o)
    return m


_U32, _STR, _BOOL, _MSG, _BYTES, _FLOAT = (
    _F.TYPE_UINT32,
    _F.TYPE_STRING,
    _F.TYPE_BOOL,
    _F.TYPE_MESSAGE,
    _F.TYPE_BYTES,
    _F.TYPE_FLOAT,
)


def _vllm_file() -> descriptor_pb2.FileDescriptorProto:
    p = ".vllm.grpc.engine."
    f = descriptor_pb2.FileDescriptorProto(
        name="kvroute/vllm_engine.proto", package="vllm.grpc.engine", syntax="proto3"
    )
    f.message_type.extend(
        [
            _message(
                "SamplingParams",
                [_field("max_tokens", 8, _U32, oneof=0, proto3_optional=True)],
                ("_max_tokens",),
            ),
            _message(
                "TokenizedInput",
                [_field("original_text", 1, _STR), _field("input_ids", 2, _U32, repeated=True)],
            ),
            _message("PlaceholderRange", [_field("offset", 1, _U32), _field("length", 2, _U32)]),
            _message(
                "MultimodalInputs",
                [
                    _field(
                        "mm_placeholders", 5, _MSG, type_name=p + "PlaceholderRange", repeated=True
                    ),
                    _field("mm_hashes", 6, _STR, repeated=True),
                ],
            ),
            _message(
                "GenerateRequest",
                [
                    _field("request_id", 1, _STR),
                    _field("tokenized", 2, _MSG, type_name=p + "TokenizedInput", oneof=0),
                    _field("text", 3, _STR, oneof=0),
                    _field("sampling_params", 4, _MSG, type_name=p + "SamplingParams"),
                    _field("stream", 5, _BOOL),
                    _field("mm_inputs", 7, _MSG, type_name=p + "MultimodalInputs"),
                ],
                ("input",),
            ),
            _message(
                "GenerateStreamChunk",
                [
                    _field("token_ids", 1, _U32, repeated=True),
                    _field("prompt_tokens", 2, _U32),
                    _field("completion_tokens", 3, _U32),
                    _field("cached_tokens", 4, _U32),
                ],
            ),
            _message(
                "GenerateComplete",
                [
                    _field("output_ids", 1, _U32, repeated=True),
                    _field("finish_reason", 2, _STR),
                    _field("prompt_tokens", 3, _U32),
                    _field("completion_tokens", 4, _U32),
                    _field("cached_tokens", 5, _U32),
                ],
            ),
            _message(
                "GenerateResponse",
                [
                    _field("chunk", 1, _MSG, type_name=p + "GenerateStreamChunk", oneof=0),
                    _field("complete", 2, _MSG, type_name=p + "GenerateComplete", oneof=0),
                ],
                ("response",),
            ),
            _message(
                "EmbedRequest",
                [
                    _field("request_id", 1, _STR),
                    _field("tokenized", 2, _MSG, type_name=p + "TokenizedInput"),
                ],
            ),
            _message(
                "EmbedResponse",
                [
                    _field("embedding", 1, _FLOAT, repeated=True),
                    _field("prompt_tokens", 2, _U32),
                    _field("embedding_dim", 3, _U32),
                ],
            ),
        ]
    )
    return f


def _http_body_file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(
        name="kvroute/httpbody.proto", package="google.api", syntax="proto3"
    )
    f.message_type.append(
        _message("HttpBody", [_field("content_type", 1, _STR), _field("data", 2, _BYTES)])
    )
    return f


def _vertex_file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(
        name="kvroute/prediction_service.proto",
        package="google.cloud.aiplatform.v1beta1",
        syntax="proto3",
        dependency=["kvroute/httpbody.proto"],
    )
    for name in ("ChatCompletionsRequest", "RawPredictRequest", "StreamRawPredictRequest"):
        f.message_type.append(
            _message(
                name,
                [
                    _field("endpoint", 1, _STR),
                    _field("http_body", 2, _MSG, type_name=".google.api.HttpBody"),
                ],
            )
        )
    return f


def _build() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    files = (_vllm_file(), _http_body_file(), _vertex_file())
    for f in files:
        pool.Add(f)
    out: dict[str, Any] = {}
    for f in files:
        for m in f.message_type:
            full = f"{f.package}.{m.name}"
            out[full] = message_factory.GetMessageClass(pool.FindMessageTypeByName(full))
    return out


# Full protobuf name -> message class.
MESSAGES: dict[str, Any] = _build()
