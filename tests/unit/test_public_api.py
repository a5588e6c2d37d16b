"""The public modules (``kvroute.sdk`` for plugin authors, ``kvroute.embed`` for programs that
run the scheduler in-process) keep a sorted ``__all__`` whose every name imports, and a plugin
written against ``kvroute.sdk`` alone registers and runs in a real scheduling cycle."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence

import pytest

from kvroute import sdk
from kvroute.embed import build_scheduling, parse_epp_config

PUBLIC_MODULES = ("kvroute.sdk", "kvroute.embed", "kvroute.embed.gateway")


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_is_sorted_and_every_name_imports(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = list(module.__all__)
    # constants first (as ruff's RUF022 orders them), then the rest case-sensitively
    assert names == sorted(names, key=lambda n: (not n.isupper(), n))
    assert len(set(names)) == len(names)
    for name in names:
        assert getattr(module, name) is not None, name


def test_sdk_covers_what_a_plugin_author_needs() -> None:
    needed = {
        "Plugin", "TypedName", "Filter", "Scorer", "Picker", "CycleState", "StateKey",
        "Endpoint", "EndpointLoad", "EndpointMetrics", "InferenceRequest", "PluginRegistry",
        "PluginValidationError", "PluginParams", "parse_params", "PrepareData", "PreRequest",
        "ResponseComplete",
    }  # fmt: skip
    assert needed <= set(sdk.__all__)


class _PreferNamed:
    """A scorer written against kvroute.sdk only: 1.0 for the endpoint its parameters name."""

    def __init__(self, name: str, target: str) -> None:
        self.typed_name = sdk.TypedName("prefer-named-scorer", name)
        self.target = target
        self.category = sdk.ScorerCategory.DISTRIBUTION

    def score(
        self,
        state: sdk.CycleState,
        request: sdk.InferenceRequest,
        endpoints: Sequence[sdk.Endpoint],
    ) -> Mapping[str, float]:
        return {e.name: 1.0 if e.name == self.target else 0.0 for e in endpoints}


class _Params(sdk.PluginParams):
    target: str


def _factory(name: str, raw: Mapping[str, object], handle: sdk.PluginHandle) -> sdk.Plugin:
    params = sdk.parse_params(_Params, name, "prefer-named-scorer", raw)
    return _PreferNamed(name, params.target)


def test_a_plugin_from_the_sdk_alone_routes() -> None:
    registry = sdk.default_registry(include_entry_points=False)
    registry.register("prefer-named-scorer", _factory)
    bad = (
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: prefer-named-scorer}]\n"
    )
    with pytest.raises(sdk.PluginValidationError, match="target"):
        build_scheduling(parse_epp_config(bad), registry)
    good = bad.replace("{type: prefer-named-scorer}", "{type: prefer-named-scorer, "
                       "parameters: {target: e2}}")  # fmt: skip
    setup = build_scheduling(parse_epp_config(good), registry)
    endpoints = [sdk.Endpoint(name=f"e{i}", address="127.0.0.1", port=8000 + i) for i in range(3)]
    request = sdk.InferenceRequest(request_id="r", incoming_model="m", target_model="m")
    result = setup.scheduler.schedule(request, endpoints, state=sdk.CycleState(0.0))
    assert result.primary is not None
    assert [e.name for e in result.primary.targets] == ["e2"]
