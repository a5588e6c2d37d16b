"""models-data-source + models-data-extractor: real HTTP on loopback to /v1/models servers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kvroute.config.epp_config import parse_epp_config
from kvroute.datalayer.http_source import PollFailed
from kvroute.datalayer.models import (
    MODELS_ATTRIBUTE,
    ModelData,
    ModelsDataExtractor,
    ModelsDataSource,
    served_models,
)
from kvroute.datalayer.plugins import data_layer_setup
from kvroute.datastore.store import Datastore
from kvroute.errors import ConfigError, PluginValidationError
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.builder import build_scheduling


class ModelServer:
    def __init__(self, body: object) -> None:
        self.body = body
        self.paths: list[str] = []
        self.app = web.Application()
        self.app.router.add_get("/{path:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        text = self.body if isinstance(self.body, str) else json.dumps(self.body)
        return web.Response(text=text, content_type="application/json")


LORA = {
    "object": "list",
    "data": [
        {"id": "base", "object": "model", "created": 17, "owned_by": "vllm", "root": "base"},
        {"id": "lora-a", "object": "model", "parent": "base"},
    ],
}


@pytest.fixture
async def servers() -> AsyncIterator[list[tuple[ModelServer, int]]]:
    out: list[tuple[ModelServer, int]] = []
    runners: list[web.AppRunner] = []
    for body in (LORA, {"object": "list", "data": [{"id": "other"}]}, "not json"):
        server = ModelServer(body)
        runner = web.AppRunner(server.app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        out.append((server, runner.addresses[0][1]))
    yield out
    for runner in runners:
        await runner.cleanup()


def build(parameters: dict[str, Any]) -> ModelsDataSource:
    reg = default_registry(include_entry_points=False)
    source = reg.create("models-data-source", "models", parameters, PluginContext())
    extractor = reg.create("models-data-extractor", "x", {}, PluginContext())
    assert isinstance(source, ModelsDataSource)
    assert source.bind_extractors([extractor]) == []
    return source


async def test_poll_records_served_models_per_endpoint(
    servers: list[tuple[ModelServer, int]],
) -> None:
    source = build({"interval": "5s"})
    assert source.interval == pytest.approx(5.0)
    store = Datastore()
    for i, (_, port) in enumerate(servers):
        store.upsert_endpoint(f"e{i}", "127.0.0.1", port)  # polled on the inference port
    source.attach(store)
    try:
        await source.poll_all()
    finally:
        await source.aclose()
    assert [s.paths for s, _ in servers] == [["/v1/models"]] * 3
    e0, e1, e2 = (store.get(f"e{i}") for i in range(3))
    assert e0 is not None
    assert e1 is not None
    assert e2 is not None
    assert served_models(e0) == (
        ModelData(id="base", object="model", created=17, owned_by="vllm"),
        ModelData(id="lora-a", object="model", parent="base"),
    )
    assert [m.id for m in served_models(e1) or ()] == ["other"]
    assert MODELS_ATTRIBUTE not in e2.attributes  # garbage page: failed poll, nothing written
    assert source.stats.failures == 1
    assert "not JSON" in source.stats.last_error


async def test_custom_path(servers: list[tuple[ModelServer, int]]) -> None:
    server, port = servers[0]
    source = build({"path": "/api/models"})
    store = Datastore()
    store.upsert_endpoint("e0", "127.0.0.1", port)
    source.attach(store)
    try:
        await source.poll_all()
    finally:
        await source.aclose()
    assert server.paths == ["/api/models"]


@pytest.mark.parametrize(
    "body",
    [{"object": "list"}, {"data": [{"name": "x"}]}, [1, 2]],
    ids=["no data", "entry without id", "not an object"],
)
def test_malformed_lists_fail_the_poll(body: object) -> None:
    source = build({})
    with pytest.raises(PollFailed):
        source.parse(json.dumps(body).encode())


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"scheme": "grpc"}, "parameters.scheme"),
        ({"path": "v1/models"}, "parameters.path"),
        ({"caCertPath": "/nonexistent/ca.pem"}, "parameters.caCertPath"),
        ({"interval": -1}, "parameters.interval"),
        ({"port": 8000}, "parameters.port"),  # upstream's models source has no port
    ],
)
def test_bad_source_parameters_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(PluginValidationError) as err:
        default_registry(include_entry_points=False).create(
            "models-data-source", "models", params, PluginContext()
        )
    assert field in str(err.value)


def test_client_cert_needs_its_key(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(PluginValidationError, match="clientCertPath and clientKeyPath"):
        default_registry(include_entry_points=False).create(
            "models-data-source", "m", {"clientCertPath": str(cert)}, PluginContext()
        )


def test_extractor_takes_no_parameters_and_rejects_a_foreign_payload() -> None:
    with pytest.raises(PluginValidationError, match="takes no parameters"):
        default_registry(include_entry_points=False).create(
            "models-data-extractor", "x", {"key": "y"}, PluginContext()
        )
    ep = Datastore().upsert_endpoint("e", "127.0.0.1", 1)
    with pytest.raises(PollFailed):
        ModelsDataExtractor().extract(ep, "a page")


HEAD = (
    "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
    "schedulingProfiles:\n- name: default\n  plugins: [{pluginRef: max-score-picker}]\n"
    "plugins:\n- type: max-score-picker\n"
)


def test_config_binds_and_rejects_the_wrong_extractor() -> None:
    ok = HEAD + (
        "- {type: models-data-source, name: ms}\n- {type: models-data-extractor, name: mx}\n"
        "dataLayer:\n  sources: [{pluginRef: ms, extractors: [{pluginRef: mx}]}]\n"
    )
    setup = build_scheduling(parse_epp_config(ok, "m.yaml"), default_registry())
    (source,) = data_layer_setup(setup.effective_config, setup.plugins).others
    assert isinstance(source, ModelsDataSource)
    assert [e.typed_name.name for e in source.extractors] == ["mx"]
    bad = HEAD + (
        "- {type: models-data-source, name: ms}\n- {type: dcgm-extractor, name: gx}\n"
        "dataLayer:\n  sources: [{pluginRef: ms, extractors: [{pluginRef: gx}]}]\n"
    )
    with pytest.raises(ConfigError) as err:
        build_scheduling(parse_epp_config(bad, "m.yaml"), default_registry())
    assert "'gx' is a dcgm-extractor, expected models-data-extractor" in err.value.message
    assert "'ms'" in err.value.message
