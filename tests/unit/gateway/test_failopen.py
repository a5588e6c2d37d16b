"""The FailOpen rewrite table (issue 20 finding 3): from the resources, into Envoy's Lua filter.

The Lua itself runs in a real Envoy in ``tests/integration/test_gateway_failopen.py``; here: the
table matches the EPP's resolver, and the filter is present exactly when it can act.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from pathlib import Path

import pytest

from kvroute.config.extproc_options import ResponseProcessing
from kvroute.config.resources import load_resources_text
from kvroute.errors import ConfigError
from kvroute.gateway.bootstrap import BootstrapOptions, FailureMode, build_bootstrap
from kvroute.gateway.failopen import FailOpenRewrites, failopen_rewrite_filter
from kvroute.gateway.gateway import Gateway
from kvroute.requestcontrol.model_resolution import ModelResolver, WeightedChoice
from kvroute.settings import EppSettings
from tests.unit.requestcontrol.test_model_resolution import RESOURCES, _model, _rewrite

SPLIT = "  targetModels: [{name: a, weight: 90}, {name: b, weight: 10}]\n"


def test_static_rewrites_follow_resolve() -> None:
    text = RESOURCES + "---\n" + _model("split", "split", None, SPLIT)
    resolver = ModelResolver(load_resources_text(text), random.Random(3))
    exact, generic = resolver.static_rewrites()
    assert exact["food-review"] == (("fr-1", 0),)
    assert exact["small-lora"] == exact["alias"] == (("small-lora-v1", 0),)
    assert exact["split"] == (("a", 90), ("b", 10))
    assert generic == (("fallback-model", 0),)
    # the same draws resolve() makes, in proportion
    drawn = Counter(resolver.resolve("split", {}).target_model for _ in range(2000))
    assert 0.85 < drawn["a"] / 2000 < 0.95


def test_weights_round_trip() -> None:
    assert WeightedChoice(["a", "b", "c"], [5, None, 7]).weights == (5, 0, 7)
    assert WeightedChoice(["a", "b"], [None, None]).weights == (0, 0)


def test_an_inference_model_beats_an_exact_rewrite_as_in_resolve() -> None:
    text = _rewrite("rw", "  - matches: [{model: {value: m}}]\n    targets: [{modelRewrite: r}]\n")
    text += "---\n" + _model("m", "m", None, "  targetModels: [{name: t}]\n")
    resolver = ModelResolver(load_resources_text(text))
    assert resolver.static_rewrites()[0]["m"] == (("t", 0),)
    assert resolver.resolve("m", {}).target_model == "t"


def _filters(opts: BootstrapOptions) -> list[str]:
    hcm = build_bootstrap(opts)["static_resources"]["listeners"][0]["filter_chains"][0]
    return [f["name"] for f in hcm["filters"][0]["typed_config"]["http_filters"]]


def test_filter_only_under_failopen_with_a_table_after_ext_proc() -> None:
    table = FailOpenRewrites(exact={"chat": (("chat-v1", 1),)})
    eps = [("127.0.0.1", 8000)]
    on = _filters(
        BootstrapOptions(endpoints=eps, failure_mode=FailureMode.FAIL_OPEN, failopen_rewrites=table)
    )
    assert on.index("kvroute.failopen_rewrite") == on.index("envoy.filters.http.ext_proc") + 1
    assert "kvroute.failopen_rewrite" not in _filters(
        BootstrapOptions(
            endpoints=eps, failure_mode=FailureMode.FAIL_CLOSE, failopen_rewrites=table
        )
    )
    assert "kvroute.failopen_rewrite" not in _filters(
        BootstrapOptions(endpoints=eps, failure_mode=FailureMode.FAIL_OPEN)
    )


def test_names_are_escaped_for_lua_and_json() -> None:
    code = failopen_rewrite_filter(FailOpenRewrites(exact={'a"b': (('t"x', 1),)}))["typed_config"][
        "default_source_code"
    ]["inline_string"]
    assert '["a\\034b"] = {{"t\\092\\034x", 1}}' in code  # the target is JSON-escaped: t\"x


def test_gateway_under_failopen_releases_streams_and_carries_the_table(tmp_path: Path) -> None:
    pool = tmp_path / "pool.yaml"
    pool.write_text(_model("chat", "chat", None, SPLIT))
    settings = EppSettings(
        resources=(pool,),
        endpoints=(("127.0.0.1", 9),),
        grpc_port=0,
        response_processing=ResponseProcessing.TAP,
    )
    gw = Gateway(settings=settings, failure_mode=FailureMode.FAIL_OPEN, log_dir=tmp_path)
    assert gw.settings.release_routed_streams
    assert gw.bootstrap_options().failopen_rewrites.exact == {"chat": (("a", 90), ("b", 10))}
    closed = Gateway(settings=settings, log_dir=tmp_path)
    assert not closed.settings.release_routed_streams
    assert not closed.bootstrap_options().failopen_rewrites
    full = dataclasses.replace(settings, response_processing=ResponseProcessing.FULL)
    # full mode: the EPP carries the response body, it cannot let go of the stream
    assert not Gateway(
        settings=full, failure_mode=FailureMode.FAIL_OPEN
    ).settings.release_routed_streams


def test_release_needs_tap_mode() -> None:
    with pytest.raises(ConfigError, match="--release-routed-streams needs"):
        EppSettings(release_routed_streams=True)
