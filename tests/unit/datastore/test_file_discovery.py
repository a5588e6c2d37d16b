"""file-discovery: the endpoints file format, reconciliation and live reload."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datastore.file_discovery import (
    MAX_FILE_BYTES,
    FileDiscovery,
    FileDiscoveryParams,
    file_discovery_for,
    parse_endpoints,
)
from kvroute.datastore.store import Datastore
from kvroute.errors import ConfigError

FILE = b"""\
endpoints:
- name: vllm-0
  address: "10.0.0.1"
  port: "8000"
  labels: {model: llama}
- {name: vllm-1, namespace: inference, address: 10.0.0.2, port: 8001}
"""


def _names(store: Datastore) -> dict[str, str]:
    return {e.name: e.hostport for e in store.endpoints()}


def test_file_format() -> None:
    eps = parse_endpoints(FILE)
    assert [(e.name, e.address, e.port, dict(e.labels)) for e in eps] == [
        ("default/vllm-0", "10.0.0.1", 8000, {"model": "llama"}),
        ("inference/vllm-1", "10.0.0.2", 8001, {}),
    ]
    dup = (
        b"endpoints:\n- {name: a, address: 10.0.0.1, port: 1}\n"
        b"- {name: a, address: 10.0.0.9, port: 2}\n"
    )
    assert [(e.address, e.port) for e in parse_endpoints(dup)] == [("10.0.0.9", 2)]  # last wins
    assert parse_endpoints(b"") == []
    assert [
        e.port
        for e in parse_endpoints(
            b'{"endpoints": [{"name": "j", "address": "10.1.1.1", "port": "9"}]}'
        )
    ] == [9]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"endpoints:\n- {name: a, address: '::1', port: 1}\n", "is not an IPv4 address"),
        (b"endpoints:\n- {name: a, address: host.example, port: 1}\n", "is not an IPv4 address"),
        (b"endpoints:\n- {name: a, address: 10.0.0.1, port: '0'}\n", "not in 1..65535"),
        (b"endpoints:\n- {name: a, address: 10.0.0.1, port: eighty}\n", "not a port number"),
        (b"endpoints:\n- {address: 10.0.0.1, port: 1}\n", "endpoints.0.name"),
        (b"endpoint: []\n", "endpoint: Extra inputs"),
        (b"endpoints: [\n", "not YAML or JSON"),
        (b"#" * (MAX_FILE_BYTES + 1), "at most 1 MiB"),
    ],
)
def test_invalid_files_are_config_errors(data: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_endpoints(data, "eps.yaml")


async def test_watch_reconciles_and_keeps_the_last_good_set(tmp_path: Path) -> None:
    path = tmp_path / "eps.yaml"
    path.write_bytes(FILE)
    source = FileDiscovery(FileDiscoveryParams(path=str(path), watchFile=True), poll_interval=0.02)
    store = Datastore()
    source.load(store)
    assert source.synced
    assert _names(store) == {"default/vllm-0": "10.0.0.1:8000", "inference/vllm-1": "10.0.0.2:8001"}
    task = asyncio.create_task(source.run(store))
    try:
        # Atomic replace: write elsewhere, rename over the watched path.
        tmp = tmp_path / "eps.new"
        tmp.write_bytes(b"endpoints:\n- {name: vllm-2, address: 10.0.0.3, port: '8000'}\n")
        tmp.replace(path)
        for _ in range(200):
            if source.reloads == 2:
                break
            await asyncio.sleep(0.01)
        assert _names(store) == {"default/vllm-2": "10.0.0.3:8000"}
        path.write_bytes(b"endpoints: [oops\n")  # a bad reload keeps the previous endpoints
        for _ in range(200):
            if source.failures:
                break
            await asyncio.sleep(0.01)
        assert source.failures == 1
        assert _names(store) == {"default/vllm-2": "10.0.0.3:8000"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_selected_by_the_config_data_layer_discovery(tmp_path: Path) -> None:
    head = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
    config = parse_epp_config(
        head + "plugins:\n- {name: eps, type: file-discovery, parameters: {path: /x.yaml}}\n"
        "dataLayer: {discovery: {pluginRef: eps}}\n"
    )
    source = file_discovery_for(config)
    assert source is not None
    assert (source.path, source.watch) == (Path("/x.yaml"), False)
    assert file_discovery_for(parse_epp_config(head)) is None
    wrong = parse_epp_config(
        head + "plugins: [{name: q, type: queue-scorer}]\ndataLayer: {discovery: {pluginRef: q}}\n"
    )
    with pytest.raises(ConfigError, match="'q' is a 'queue-scorer'"):
        file_discovery_for(wrong)
    missing = parse_epp_config(
        head + "plugins: [{type: file-discovery, parameters: {}}]\n"
        "dataLayer: {discovery: {pluginRef: file-discovery}}\n"
    )
    with pytest.raises(ConfigError, match=r"parameters\.path"):
        file_discovery_for(missing)
