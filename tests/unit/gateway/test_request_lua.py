"""The generated config of ``--transport lua`` (issue 19): shape, and Envoy accepts it.

What the Lua filter does at run time is tested through a real Envoy in
``tests/integration/test_lua_transport.py``; here the bootstrap around it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvroute.extproc.lua_route import ROUTE_HTTP_PATH
from kvroute.gateway.bootstrap import BootstrapOptions, FailureMode, build_bootstrap
from kvroute.gateway.envoy import find_envoy
from kvroute.gateway.request_lua import ROUTE_CLUSTER, lua_source

EPS = (("127.0.0.1", 8001), ("127.0.0.1", 8002))


def _hcm(doc: dict[str, Any]) -> dict[str, Any]:
    listener = doc["static_resources"]["listeners"][0]
    cfg: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return cfg


def _clusters(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["static_resources"]["clusters"]}


def _opts(tmp: Path, **kw: Any) -> BootstrapOptions:
    return BootstrapOptions(
        endpoints=EPS,
        epp_tls=False,
        response_processing="tap",
        epp_uds=str(tmp / "epp.sock"),
        tap_http_uds=str(tmp / "epp.sock-tap"),
        route_uds=str(tmp / "epp.sock-route"),
        ended_fifo=str(tmp / "epp.sock-ended"),
        request_body_buffer_limit_bytes=5_000_000,
        **kw,
    )


def test_no_ext_proc_the_lua_filter_in_its_place(tmp_path: Path) -> None:
    doc = build_bootstrap(_opts(tmp_path))
    names = [f["name"] for f in _hcm(doc)["http_filters"]]
    assert "envoy.filters.http.ext_proc" not in names
    # after the edge's header filters (clients' destination headers are gone by then), after
    # the response tap (it runs last on the way back), before the router
    assert names.index("kvroute.request_route") == names.index("kvroute.response_tap") + 1
    assert names[-1] == "envoy.filters.http.router"
    route = _clusters(doc)[ROUTE_CLUSTER]
    endpoint = route["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"pipe": {"path": str(tmp_path / "epp.sock-route")}}
    assert "typed_extension_protocol_options" not in route  # HTTP/1.1


def test_the_404_route_does_not_ask_the_epp(tmp_path: Path) -> None:
    routes = _hcm(build_bootstrap(_opts(tmp_path)))["route_config"]["virtual_hosts"][0]["routes"]
    per_filter = routes[-1]["typed_per_filter_config"]
    assert routes[-1]["direct_response"]["status"] == 404
    assert per_filter["kvroute.request_route"]["disabled"] is True


def test_the_body_fits_the_connection_buffer_and_every_route(tmp_path: Path) -> None:
    doc = build_bootstrap(_opts(tmp_path))
    listener = doc["static_resources"]["listeners"][0]
    assert listener["per_connection_buffer_limit_bytes"] == 5_000_000
    routes = _hcm(doc)["route_config"]["virtual_hosts"][0]["routes"]
    inference = [r for r in routes if r.get("direct_response", {}).get("status", 503) == 503]
    assert len(inference) == len(routes) - 1  # all but the 404 for other paths
    assert all(r["request_body_buffer_limit"] == 5_000_000 for r in inference)
    # the ext_proc shape keeps Envoy's default connection buffer
    plain = build_bootstrap(BootstrapOptions(endpoints=EPS))
    assert "per_connection_buffer_limit_bytes" not in plain["static_resources"]["listeners"][0]


def test_streams_ended_with_a_response_flag_are_logged_to_the_fifo(tmp_path: Path) -> None:
    (log,) = _hcm(build_bootstrap(_opts(tmp_path)))["access_log"]
    assert log["filter"] == {"response_flag_filter": {}}
    cfg = log["typed_config"]
    assert cfg["path"] == str(tmp_path / "epp.sock-ended")
    assert cfg["log_format"]["text_format_source"]["inline_string"] == (
        "%DYNAMIC_METADATA(kvroute.tap:id)%\n"
    )


@pytest.mark.parametrize("fail_open", [False, True])
def test_lua_source_names_the_cluster_path_and_failure_mode(fail_open: bool) -> None:
    src = lua_source(fail_open=fail_open)
    assert f'local CLUSTER = "{ROUTE_CLUSTER}"' in src
    assert f'local PATH = "{ROUTE_HTTP_PATH}"' in src
    assert f"local FAIL_OPEN = {'true' if fail_open else 'false'}" in src
    assert "clearRouteCache()" in src
    assert "@" not in src.replace('"@type"', "")  # every placeholder filled


@pytest.mark.parametrize("mode", [FailureMode.FAIL_CLOSE, FailureMode.FAIL_OPEN])
def test_envoy_validates_the_lua_config(mode: FailureMode, tmp_path: Path) -> None:
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(build_bootstrap(_opts(tmp_path, failure_mode=mode))))
    proc = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
