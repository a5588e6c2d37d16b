"""Property-based fuzzing of the ext_proc stream state machine (issue 20).

Arbitrary message orders and chunkings through :class:`ExtProcStream`'s public entry points
(``receive`` per message, ``close`` at the end, exactly as ``server.py`` drives it), over the
production backend (real director, scheduler, codec) on a two-endpoint datastore. Properties:

* nothing but :class:`ProtocolViolation` (which aborts the gRPC stream by design) ever leaves
  ``receive``; every answer is a ``ProcessingResponse``;
* after ``close``, every request that was routed has been completed exactly once: the
  endpoints' in-flight counts are back to 0, and the shared body budget holds nothing.

Bounded (``max_examples`` small, no deadline) so it runs in ``make test`` in seconds; raise
``KVROUTE_FUZZ_EXAMPLES`` for a longer run. Routing is async, so ``_drive`` feeds ``areceive``
on one event loop, as the server does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kvroute.app import build_director_backend
from kvroute.config.epp_config import default_config_text
from kvroute.datastore.store import Datastore
from kvroute.extproc.body_budget import BodyBudget
from kvroute.extproc.stream import ExtProcStream, ProtocolViolation, StreamOptions
from kvroute.observability.metrics import EppMetrics
from kvroute.plugins.registry import default_registry
from kvroute.settings import EppSettings

EXAMPLES = int(os.environ.get("KVROUTE_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


World = tuple[Any, Datastore, asyncio.AbstractEventLoop]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    """The production backend on one event loop that every example runs on (routing is
    async: the backend awaits the scheduler and flow control)."""
    store = Datastore()
    store.upsert_endpoint("a", "10.0.0.1", 8000)
    store.upsert_endpoint("b", "10.0.0.2", 8000)
    # the default profile; flow control off: nothing scrapes these endpoints, so its saturation
    # detector would hold every request (flow control has its own tests)
    config = default_config_text(default_registry()) + "flowControl: {enabled: false}\n"
    s = EppSettings(
        endpoints=(("10.0.0.1", 8000), ("10.0.0.2", 8000)),
        secure_serving=False,
        config_text=config,
    )
    loop = asyncio.new_event_loop()
    built = loop.run_until_complete(build_director_backend(s, store, EppMetrics("fuzz")))
    yield built.backend, store, loop
    loop.close()


def _hdrs(pairs: Sequence[tuple[str, str]], eos: bool) -> Any:
    hm = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
    )
    return pb.HttpHeaders(headers=hm, end_of_stream=eos)


HEADER_NAMES = st.sampled_from(
    [":path", ":method", "content-length", "content-type", "content-encoding", "x-request-id",
     "x-gateway-model-name-rewrite", "x-gateway-inference-objective", "x-gateway-destination-"
     "endpoint", ":status", "x-gateway-destination-endpoint-served", "x-other"]
)  # fmt: skip
HEADER_VALUES = st.sampled_from(
    ["/v1/completions", "/v1/chat/completions", "/v1/models", "POST", "GET", "0", "12", "99999999",
     "²", "text/event-stream", "application/json", "gzip", "200", "500", "abc", "", "m"]
) | st.text(max_size=10)  # fmt: skip
HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6)
BODIES = st.sampled_from(
    [
        json.dumps({"model": "m", "prompt": "hello", "stream": True}).encode(),
        json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode(),
        b'data: {"model":"m","usage":{"prompt_tokens":1}}\n\ndata: [DONE]\n\n',
        b'{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":2}}',
        b"{not json",
        b"",
    ]
) | st.binary(max_size=64)


@st.composite
def chunks_of(draw: st.DrawFn, body: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    edges = [0, *cuts, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges)]


@st.composite
def one_message(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["rqh", "rqb", "rqt", "rsh", "rsb", "rst", "empty"]))
    eos = draw(st.booleans())
    if kind == "rqh":
        return pb.ProcessingRequest(request_headers=_hdrs(draw(HEADERS), eos))
    if kind == "rsh":
        return pb.ProcessingRequest(response_headers=_hdrs(draw(HEADERS), eos))
    if kind in ("rqb", "rsb"):
        body = pb.HttpBody(body=draw(BODIES), end_of_stream=eos)
        return pb.ProcessingRequest(**{"request_body" if kind == "rqb" else "response_body": body})
    if kind == "rqt":
        return pb.ProcessingRequest(request_trailers=pb.HttpTrailers())
    if kind == "rst":
        return pb.ProcessingRequest(response_trailers=pb.HttpTrailers())
    return pb.ProcessingRequest()


@st.composite
def exchange(draw: st.DrawFn) -> list[Any]:
    """A well-formed exchange (random chunking, headers, status, content type), then mutated:
    messages dropped, duplicated or inserted at random places."""
    path = draw(st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/models"]))
    req = draw(BODIES)
    msgs: list[Any] = [
        pb.ProcessingRequest(
            request_headers=_hdrs([(":path", path), (":method", "POST"), *draw(HEADERS)], not req)
        )
    ]
    parts = draw(chunks_of(req)) if req else []
    msgs += [
        pb.ProcessingRequest(request_body=pb.HttpBody(body=c, end_of_stream=i == len(parts) - 1))
        for i, c in enumerate(parts)
    ]
    if draw(st.booleans()):
        msgs.append(pb.ProcessingRequest(request_trailers=pb.HttpTrailers()))
    status = draw(st.sampled_from(["200", "500", "404", "x"]))
    ctype = draw(st.sampled_from(["text/event-stream", "application/json"]))
    resp = draw(BODIES)
    msgs.append(
        pb.ProcessingRequest(
            response_headers=_hdrs([(":status", status), ("content-type", ctype)], not resp)
        )
    )
    rparts = draw(chunks_of(resp)) if resp else []
    msgs += [
        pb.ProcessingRequest(response_body=pb.HttpBody(body=c, end_of_stream=i == len(rparts) - 1))
        for i, c in enumerate(rparts)
    ]
    if draw(st.booleans()):
        msgs.append(pb.ProcessingRequest(response_trailers=pb.HttpTrailers()))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["drop", "dup", "insert"]))
        i = draw(st.integers(0, max(0, len(msgs) - 1)))
        if op == "drop" and msgs:
            del msgs[i]
        elif op == "dup" and msgs:
            msgs.insert(i, msgs[i])
        else:
            msgs.insert(i, draw(one_message()))
    return msgs


async def _drive(stream: ExtProcStream, messages: Sequence[Any]) -> list[Any]:
    """What ``server.py`` does: receive each message until a protocol violation, then close."""
    out: list[Any] = []
    try:
        for m in messages:
            out.extend(await asyncio.wait_for(stream.areceive(m), 10))
    except ProtocolViolation:
        pass
    finally:
        stream.close()
    return out


REACHED: dict[str, int] = {"routed": 0, "completed": 0}


def _check(world: World, messages: list[Any], light: bool) -> None:
    backend, store, loop = world
    budget = BodyBudget(1 << 20)
    mode = "light" if light else "full"
    stream = ExtProcStream(backend, StreamOptions(mode, 256, body_budget=budget))  # type: ignore[arg-type]
    out = loop.run_until_complete(_drive(stream, messages))
    if stream.routed is not None:
        REACHED["routed"] += 1
        REACHED["completed"] += stream.state.value == "complete"
    assert all(isinstance(r, pb.ProcessingResponse) for r in out)
    assert budget.in_use == 0
    assert [e.load.inflight for e in store.endpoints()] == [0, 0]


def _valid_exchange(stream: bool) -> list[Any]:
    """One unmutated exchange that routes and completes (an explicit example, so the check
    below does not depend on the generator drawing one: random exchanges complete rarely)."""
    body = json.dumps({"model": "m", "prompt": "hello", "stream": stream}).encode()
    resp = BODIES_SSE if stream else b'{"model":"m","usage":{"prompt_tokens":3}}'
    ctype = "text/event-stream" if stream else "application/json"
    return [
        pb.ProcessingRequest(
            request_headers=_hdrs([(":path", "/v1/completions"), (":method", "POST")], False)
        ),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)),
        pb.ProcessingRequest(
            response_headers=_hdrs([(":status", "200"), ("content-type", ctype)], False)
        ),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=resp, end_of_stream=True)),
    ]


BODIES_SSE = b'data: {"model":"m","usage":{"prompt_tokens":1}}\n\ndata: [DONE]\n\n'


@FUZZ
@given(messages=exchange(), light=st.booleans())
@example(messages=_valid_exchange(stream=False), light=False)
@example(messages=_valid_exchange(stream=True), light=True)
def test_mutated_exchanges_never_escape_and_always_complete(
    world: World, messages: list[Any], light: bool
) -> None:
    _check(world, messages, light)


@FUZZ
@given(messages=st.lists(one_message(), max_size=10), light=st.booleans())
def test_arbitrary_message_orders_never_escape(
    world: World, messages: list[Any], light: bool
) -> None:
    _check(world, messages, light)


def test_the_fuzzers_reached_routing_and_completion() -> None:
    """Runs after the two above (file order): the generators are not all rejected early."""
    assert REACHED["routed"] > 0
    assert REACHED["completed"] > 0
