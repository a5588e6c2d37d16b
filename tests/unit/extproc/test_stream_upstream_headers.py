"""Headers a PreRequest plugin sets travel in the header answer; clients' copies are stripped."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kvroute.extproc.backend import Routed, RoutingInput
from kvroute.extproc.stream import ExtProcStream
from tests.unit.extproc.test_stream import (
    COMPLETION,
    _Backend,
    req_body,
    req_headers,
    run,
    set_headers,
)


@dataclass
class _PdBackend(_Backend):
    extra: dict[str, str] = dataclasses.field(default_factory=dict)

    async def route(self, request: RoutingInput) -> Routed:
        return dataclasses.replace(await super().route(request), upstream_headers=self.extra)


def test_prefiller_header_is_set_and_a_client_copy_removed() -> None:
    backend = _PdBackend(extra={"x-prefiller-host-port": "10.0.0.9:8000"})
    head, *_ = run(ExtProcStream(backend), [req_headers(), req_body(COMPLETION)])
    assert set_headers(head)["x-prefiller-host-port"] == "10.0.0.9:8000"

    forged = {"x-prefiller-host-port": "6.6.6.6:1", "x-encoder-hosts-ports": "6.6.6.6:2"}
    head, *_ = run(ExtProcStream(_PdBackend()), [req_headers(forged), req_body(COMPLETION)])
    removed = set(head.request_headers.response.header_mutation.remove_headers)
    assert removed >= set(forged)
    assert "x-prefiller-host-port" not in set_headers(head)
