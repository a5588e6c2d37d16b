"""Dynamic metadata from ResponseMetadata plugins (``request-attribute-reporter``) on the last
ext_proc response message: the real stream over the production backend, director, scheduler
and CEL evaluation (no network: protobuf messages in, protobuf messages out)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from google.protobuf import json_format

from kvroute.app import build_director_backend
from kvroute.datastore.endpoint import EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.extproc.stream import ExtProcStream
from kvroute.observability.metrics import EppMetrics
from kvroute.settings import EppSettings
from tests.unit.extproc.test_stream import feed, req_body, req_headers, resp_body, resp_headers

CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- name: cost
  type: request-attribute-reporter
  parameters:
    attributes:
    - key: {name: x-gateway-inference-request-cost}
      expression: usage.prompt_tokens + usage.completion_tokens
      condition: has(usage.prompt_tokens) && has(usage.completion_tokens)
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}]
flowControl: {enabled: false}
"""


def _stream() -> ExtProcStream:
    store = Datastore()
    store.upsert_endpoint("ep0", "10.0.0.1", 8000)
    store.update_metrics("ep0", EndpointMetrics())
    settings = EppSettings(endpoints=(("10.0.0.1", 8000),), config_text=CONFIG)
    built = asyncio.run(build_director_backend(settings, store, EppMetrics("ignored")))
    stream = ExtProcStream(built.backend)
    body = json.dumps({"model": "m", "prompt": "hi"}).encode()
    feed(stream, req_headers())
    feed(stream, req_body(body))
    feed(stream, resp_headers())
    return stream


def _metadata(resp: Any) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(resp.dynamic_metadata)
    return out


def test_the_value_rides_on_the_end_of_stream_body_message() -> None:
    stream = _stream()
    doc = b'{"model":"m","usage":{"prompt_tokens":12,"completion_tokens":30}}'
    assert feed(stream, resp_body(doc[:5], eos=False)) == []
    out = feed(stream, resp_body(doc[5:], eos=True))
    assert _metadata(out[-1]) == {"envoy.lb": {"x-gateway-inference-request-cost": 42.0}}


def test_no_usage_sends_no_metadata() -> None:
    stream = _stream()
    out = feed(stream, resp_body(b'{"model":"m"}', eos=True))
    assert not out[-1].HasField("dynamic_metadata")
