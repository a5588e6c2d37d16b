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


# -- multicluster-file-discovery: peer clusters, reached by host name or IP ---------------------

CLUSTERS = b"""\
endpoints:
- {name: cluster-a, address: gw.cluster-a.example.com, port: "443"}
- name: cluster-b
  address: "fd00::7"
  port: 8443
  labels: {metricsAddress: 10.9.0.1, metricsPort: "9090"}
- {name: cluster-c, namespace: peers, address: 10.0.0.3, port: "443"}
"""


def test_multicluster_addresses_may_be_host_names_or_any_ip() -> None:
    eps = parse_endpoints(CLUSTERS, hostnames=True)
    assert [(e.name, e.address, e.port) for e in eps] == [
        ("default/cluster-a", "gw.cluster-a.example.com", 443),
        ("default/cluster-b", "fd00::7", 8443),
        ("peers/cluster-c", "10.0.0.3", 443),
    ]
    assert dict(eps[1].labels) == {"metricsAddress": "10.9.0.1", "metricsPort": "9090"}
    with pytest.raises(ConfigError, match="is not an IPv4 address"):
        parse_endpoints(CLUSTERS)  # the pod discovery still wants IPv4


@pytest.mark.parametrize(
    "address",
    ["Gw.Example.com", "gw_a.example.com", "-gw.example.com", "gw..example.com", "a" * 254],
)
def test_multicluster_rejects_what_is_no_host_name(address: str) -> None:
    data = f"endpoints:\n- {{name: a, address: '{address}', port: 1}}\n".encode()
    with pytest.raises(ConfigError, match="neither an IP address nor a DNS-1123 host name"):
        parse_endpoints(data, "clusters.yaml", hostnames=True)


async def test_multicluster_discovery_from_config_watches_the_file(tmp_path: Path) -> None:
    path = tmp_path / "clusters.yaml"
    path.write_bytes(CLUSTERS)
    head = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
    config = parse_epp_config(
        head + "plugins:\n- {name: discovery, type: multicluster-file-discovery, parameters: "
        f"{{path: '{path}', watchFile: true}}}}\n"
        "dataLayer: {discovery: {pluginRef: discovery}}\n"
    )
    source = file_discovery_for(config)
    assert source is not None
    assert source.hostnames
    assert source.watch
    source.poll_interval = 0.02
    store = Datastore()
    task = asyncio.create_task(source.run(store))
    try:
        for _ in range(200):
            if len(store) == 3:
                break
            await asyncio.sleep(0.01)
        assert _names(store) == {
            "default/cluster-a": "gw.cluster-a.example.com:443",
            "default/cluster-b": "[fd00::7]:8443",
            "peers/cluster-c": "10.0.0.3:443",
        }
        path.write_bytes(b"endpoints:\n- {name: cluster-d, address: gw.d.example.org, port: 443}\n")
        for _ in range(200):
            if source.reloads == 2:
                break
            await asyncio.sleep(0.01)
        assert _names(store) == {"default/cluster-d": "gw.d.example.org:443"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_multicluster_discovery_plugin_validates_its_parameters() -> None:
    from kvroute.errors import PluginValidationError
    from kvroute.plugins.registry import PluginContext, default_registry

    reg = default_registry(include_entry_points=False)
    plugin = reg.create("multicluster-file-discovery", "d", {"path": "/c.yaml"}, PluginContext())
    assert plugin.typed_name.type == "multicluster-file-discovery"
    with pytest.raises(PluginValidationError, match=r"parameters\.path"):
        reg.create("multicluster-file-discovery", "d", {}, PluginContext())
    with pytest.raises(PluginValidationError, match=r"parameters\.watch"):
        reg.create(
            "multicluster-file-discovery", "d", {"path": "/c", "watch": True}, PluginContext()
        )
