"""Tracing configuration, the off-by-default path, and spans from the director backend."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvroute.errors import ConfigError
from kvroute.observability.tracing import TracingConfig


def test_off_unless_asked() -> None:
    assert TracingConfig.resolve(None, None, None, env={}).enabled is False


def test_otel_variables_apply_when_flags_are_unset() -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
        "OTEL_TRACES_SAMPLER_ARG": "0.01",
        "OTEL_SERVICE_NAME": "epp-a",
    }
    c = TracingConfig.resolve(None, None, None, env=env)
    assert (c.enabled, c.endpoint, c.sampling_ratio, c.service_name) == (
        True,
        "http://collector:4317",
        0.01,
        "epp-a",
    )
    traces_only = {**env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4317"}
    assert TracingConfig.resolve(None, None, None, env=traces_only).endpoint == "http://t:4317"


def test_flags_win_over_variables() -> None:
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER_ARG": "0.5"}
    c = TracingConfig.resolve(False, "http://x:1", 0.25, env=env)
    assert (c.enabled, c.endpoint, c.sampling_ratio) == (False, "http://x:1", 0.25)


def test_bad_ratio_is_rejected_with_the_flag_name() -> None:
    with pytest.raises(ConfigError, match="--tracing-sampling-ratio"):
        TracingConfig.resolve(True, None, 1.5, env={})
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER_ARG"):
        TracingConfig.resolve(None, None, None, env={"OTEL_TRACES_SAMPLER_ARG": "lots"})


def test_tracing_off_imports_no_opentelemetry() -> None:
    """A whole EPP (director backend built, a request routed) without the SDK ever imported."""
    code = """
import asyncio, sys
from kvroute.app import EppApp
from kvroute.settings import EppSettings
async def main():
    s = EppSettings(grpc_port=0, grpc_health_port=0, metrics_port=0, bind_host="127.0.0.1",
                    endpoints=(("127.0.0.1", 9),), secure_serving=False)
    async with EppApp(s):
        pass
asyncio.run(main())
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
