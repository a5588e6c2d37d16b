"""``endpoint-notification-source``: replays and forwards the real Datastore's endpoint events to
the extractors listed under it; load-time checks of what may be listed there."""

from __future__ import annotations

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datalayer.notifications import (
    PLUGINS,
    EndpointExtractor,
    EndpointNotificationSource,
)
from kvroute.datastore.store import Datastore, EndpointEvent, EndpointEventKind
from kvroute.errors import ConfigError, PluginValidationError
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginContext
from kvroute.wiring import build_epp


class Recorder:
    """A real extractor of our own: records (kind, endpoint name) of what it is sent."""

    def __init__(self, name: str = "rec", *, fail: bool = False) -> None:
        self.typed_name = TypedName("recorder", name)
        self.seen: list[tuple[str, str]] = []
        self.fail = fail

    def extract_endpoint(self, event: EndpointEvent) -> None:
        self.seen.append((event.kind.value, event.endpoint.name))
        if self.fail:
            raise RuntimeError("boom")


def test_attach_replays_existing_endpoints_then_forwards_changes_in_order() -> None:
    store = Datastore()
    store.upsert_endpoint("a", "10.0.0.1", 8000)
    source = EndpointNotificationSource()
    first, second = Recorder("first"), Recorder("second")
    assert isinstance(first, EndpointExtractor)
    assert source.bind_extractors([first, second]) == []
    source.attach(store)
    assert first.seen == [("added", "a")]
    store.upsert_endpoint("b", "10.0.0.2", 8000)
    store.upsert_endpoint("b", "10.0.0.2", 8000, {"x": "1"})  # same server, new labels
    store.remove_endpoint("a")
    expected = [("added", "a"), ("added", "b"), ("labels_changed", "b"), ("removed", "a")]
    assert first.seen == expected
    assert second.seen == expected
    assert source.delivered == 8


def test_rebinding_replaces_the_extractors() -> None:
    source = EndpointNotificationSource()
    old, new = Recorder("old"), Recorder("new")
    source.bind_extractors([old])
    source.bind_extractors([new])  # each resolution passes the whole list again
    store = Datastore()
    source.attach(store)
    store.upsert_endpoint("a", "10.0.0.1", 8000)
    assert old.seen == []
    assert new.seen == [("added", "a")]


def test_a_failing_extractor_does_not_stop_the_others() -> None:
    source = EndpointNotificationSource()
    bad, good = Recorder("bad", fail=True), Recorder("good")
    source.bind_extractors([bad, good])
    store = Datastore()
    source.attach(store)
    store.upsert_endpoint("a", "10.0.0.1", 8000)  # does not raise into the datastore writer
    assert good.seen == [("added", "a")]


def test_parameters_are_rejected_by_name() -> None:
    factory = PLUGINS["endpoint-notification-source"]
    with pytest.raises(PluginValidationError, match=r"takes no parameters.*interval"):
        factory("n", {"interval": "1s"}, PluginContext())


CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: endpoint-notification-source
- type: mm-embeddings-cache-producer
- type: queue-scorer
- type: max-score-picker
dataLayer:
  sources:
  - pluginRef: endpoint-notification-source
    extractors: EXTRACTORS
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
"""


def test_a_plugin_that_takes_no_endpoint_events_is_rejected_naming_it() -> None:
    text = CONFIG.replace("EXTRACTORS", "[{pluginRef: queue-scorer}]")
    with pytest.raises(ConfigError) as err:
        build_epp(parse_epp_config(text, "n.yaml"), Datastore())
    msg = str(err.value)
    assert "dataLayer.sources[0].extractors" in msg
    assert "'queue-scorer' (queue-scorer) takes no endpoint events" in msg


def test_a_datastore_listener_may_be_listed_and_is_not_sent_events_twice() -> None:
    text = CONFIG.replace("EXTRACTORS", "[{pluginRef: mm-embeddings-cache-producer}]")
    store = Datastore()
    graph = build_epp(parse_epp_config(text, "n.yaml"), store)
    source = graph.setup.plugins["endpoint-notification-source"]
    assert isinstance(source, EndpointNotificationSource)
    assert source.extractors == ()  # the producer follows the datastore itself
    producer: object = graph.setup.plugins["mm-embeddings-cache-producer"]
    assert any(p is producer for p in graph.capabilities.listeners)
    assert any(p is source for p in graph.capabilities.attachables)
    store.upsert_endpoint("a", "10.0.0.1", 8000)
    assert source.delivered == 0


def test_the_source_must_be_listed_in_data_layer() -> None:
    text = (
        CONFIG.split("dataLayer:")[0]
        + "schedulingProfiles:"
        + CONFIG.split("schedulingProfiles:")[1]
    )
    with pytest.raises(ConfigError, match=r"endpoint-notification-source.*dataLayer\.sources"):
        build_epp(parse_epp_config(text, "n.yaml"), Datastore())


def test_kind_values_are_upstreams_add_update_and_delete() -> None:
    # ADDED and LABELS_CHANGED are upstream's add/update, REMOVED its delete: all three reach
    # the extractors (checked above); the enum has no other kinds to forget.
    assert {k.value for k in EndpointEventKind} == {"added", "labels_changed", "removed"}
