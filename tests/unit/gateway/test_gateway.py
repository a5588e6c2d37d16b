"""``Gateway(transport=...)``: which request transport runs, and refusals (issue 19)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from kvroute.config.extproc_options import ResponseProcessing
from kvroute.errors import ConfigError
from kvroute.gateway.gateway import Gateway, lua_fits

EP = ["http://127.0.0.1:8001"]


def test_auto_picks_lua_only_where_it_can_run() -> None:
    tap = Gateway(EP, transport="auto")
    assert tap.transport == "lua"
    assert tap.epp.lua_route
    full = Gateway(EP, transport="auto", response_processing=ResponseProcessing.FULL)
    assert full.transport == "ext_proc"
    assert not full.epp.lua_route
    assert Gateway(EP, transport="auto", secure_serving=True).transport == "ext_proc"
    assert Gateway(EP, transport="auto", private_sockets=False).transport == "ext_proc"
    s = tap.settings
    assert lua_fits(s)
    assert not lua_fits(dataclasses.replace(s, grpc_port=9002))
    assert not lua_fits(dataclasses.replace(s, tap_report="grpc"))
    assert not lua_fits(s, private_sockets=False)


def test_default_is_auto_so_lua_where_it_can_run() -> None:
    gw = Gateway(EP)
    assert gw.transport == "lua"
    assert gw.epp.lua_route
    assert Gateway(EP, response_processing=ResponseProcessing.FULL).transport == "ext_proc"


def test_ext_proc_still_chosen_by_name() -> None:
    gw = Gateway(EP, transport="ext_proc")
    assert gw.transport == "ext_proc"
    assert not gw.epp.lua_route
    assert gw.bootstrap_options().route_uds is None


def test_unknown_transport_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="--transport 'grpc'"):
        Gateway(EP, transport="grpc")


def test_lua_without_the_private_sockets_is_refused() -> None:
    gw = Gateway(EP, transport="lua", private_sockets=False)
    with pytest.raises(ConfigError, match="--transport lua needs kvroute serve's private"):
        asyncio.run(gw.__aenter__())
