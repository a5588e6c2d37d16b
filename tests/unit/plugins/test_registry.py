"""PluginRegistry: registration, creation errors, the handle's RNG and plugin lookup."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import pytest

from kvroute.errors import PluginValidationError
from kvroute.plugins.base import Plugin, TypedName
from kvroute.plugins.registry import (
    PluginContext,
    PluginHandle,
    PluginRegistry,
    default_registry,
    handle_rng,
)


class _Dummy:
    def __init__(self, name: str) -> None:
        self.typed_name = TypedName("dummy", name)


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Plugin:
    return _Dummy(name)


def test_register_and_create() -> None:
    registry = PluginRegistry()
    registry.register("dummy", _factory)
    assert "dummy" in registry
    plugin = registry.create("dummy", "d1", {}, PluginContext())
    assert plugin.typed_name == TypedName("dummy", "d1")


def test_double_registration_is_an_error() -> None:
    registry = PluginRegistry()
    registry.register("dummy", _factory)
    with pytest.raises(PluginValidationError, match="registered twice"):
        registry.register("dummy", _factory)


def test_unknown_type_lists_the_registered_ones() -> None:
    registry = default_registry(include_entry_points=False)
    with pytest.raises(PluginValidationError) as exc:
        registry.create("no-such-scorer", "x", {}, PluginContext())
    assert "unknown type 'no-such-scorer'" in exc.value.message
    assert "queue-scorer" in exc.value.message


def test_context_looks_up_plugins_built_before() -> None:
    ctx = PluginContext()
    ctx.plugins["a"] = _Dummy("a")
    assert ctx.plugin("a").typed_name.name == "a"
    with pytest.raises(PluginValidationError, match="'b' is not defined"):
        ctx.plugin("b")


def test_handle_rng_uses_the_context_rng_and_tolerates_older_handles() -> None:
    rng = random.Random(5)
    assert handle_rng(PluginContext(random_source=rng)) is rng

    class OldHandle:
        def plugin(self, name: str) -> Plugin:
            raise KeyError(name)

        def now(self) -> float:
            return 0.0

    assert isinstance(handle_rng(OldHandle()), random.Random)


def test_seeded_context_makes_pickers_reproducible() -> None:
    from kvroute.scheduling.profile import ScoredView
    from tests.fakes import make_endpoint, make_state

    eps = [make_endpoint(f"e{i}") for i in range(10)]
    view = ScoredView(eps, dict.fromkeys([e.name for e in eps], 0.5))
    registry = default_registry(include_entry_points=False)

    def picks(seed: int) -> list[str]:
        ctx = PluginContext(random_source=random.Random(seed))
        picker: Any = registry.create("random-picker", "p", {}, ctx)
        return [picker.pick(make_state(), view).targets[0].name for _ in range(20)]

    assert picks(1) == picks(1)
    assert picks(1) != picks(2)
