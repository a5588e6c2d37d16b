"""The chart's autoscaling objects: HPAs (with prometheus-adapter rules) or KEDA ScaledObjects,
one per accelerator class, rendered and dry-run with ``kubectl`` against the fake API server.

The fake API server is started with two more types than a bare cluster has: autoscaling/v2
HorizontalPodAutoscaler (built into every cluster) and keda.sh/v1alpha1 ScaledObject (what
installing KEDA adds); it serves no OpenAPI, so ``--validate=false``. ``kubectl`` missing: skip.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_k8s_deploy import CHART, KUBECTL, docs_of, kubectl, needs_kubectl
from tests.k8s_apiserver import FakeApiServer
from tests.k8s_apiserver.fixtures import running_api
from tests.k8s_apiserver.helmlite import TemplateError, render_chart
from tests.k8s_apiserver.resource_types import DEFAULT_TYPES, ResourceType

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CLASSES = [
    {"accelerator": "h100", "deployment": "vllm-h100", "minReplicas": 2, "maxReplicas": 8},
    {
        "accelerator": "l4",
        "deployment": "vllm-l4",
        "maxReplicas": 16,
        "metric": "kvroute_pool_average_kv_cache_utilization",
        "target": "0.7",
    },
]
EXTRA_TYPES = (
    ResourceType("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers",
                 True, True, ("hpa",)),
    ResourceType("keda.sh", "v1alpha1", "ScaledObject", "scaledobjects", True, True, ("so",)),
)  # fmt: skip


def autoscaling_docs(mode: str, release: str = "vllm") -> list[dict[str, Any]]:
    values = {"autoscaling": {"enabled": True, "mode": mode, "classes": CLASSES}}
    rendered = render_chart(CHART, release=release, namespace="llm", values=values)
    return docs_of(rendered["autoscaling.yaml"])


def test_autoscaling_is_off_by_default() -> None:
    rendered = render_chart(CHART, release="vllm", namespace="llm")
    assert docs_of(rendered["autoscaling.yaml"]) == []


def test_hpa_mode_renders_one_hpa_per_class_and_the_adapter_rules() -> None:
    docs = autoscaling_docs("hpa")
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert [h["spec"]["scaleTargetRef"]["name"] for h in hpas] == ["vllm-h100", "vllm-l4"]
    h100, l4 = (h["spec"] for h in hpas)
    assert (h100["minReplicas"], h100["maxReplicas"], l4["minReplicas"]) == (2, 8, 1)
    ext = h100["metrics"][0]["external"]
    assert ext["metric"]["name"] == "kvroute_pool_average_queue_size"
    assert ext["metric"]["selector"]["matchLabels"] == {"name": "vllm", "accelerator": "h100"}
    assert ext["target"] == {"type": "Value", "value": "4"}
    assert l4["metrics"][0]["external"]["target"]["value"] == "0.7"
    assert h100["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (rule,) = yaml.safe_load(cm["data"]["config.yaml"])["externalRules"]
    assert rule["metricsQuery"] == "max(<<.Series>>{<<.LabelMatchers>>})"


def test_keda_mode_renders_one_scaled_object_per_class() -> None:
    docs = autoscaling_docs("keda")
    assert {d["kind"] for d in docs} == {"ScaledObject"}
    (trigger,) = docs[0]["spec"]["triggers"]
    assert trigger["metricType"] == "Value"
    assert trigger["metadata"]["query"] == (
        'max(kvroute_pool_average_queue_size{name="vllm",accelerator="h100"})'
    )
    assert docs[1]["spec"]["maxReplicaCount"] == 16


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    async with running_api(types=(*DEFAULT_TYPES, *EXTRA_TYPES)) as server:
        yield server


@needs_kubectl
@pytest.mark.parametrize("mode", ["hpa", "keda"])
async def test_kubectl_dry_run_of_the_autoscaling_objects(
    api: FakeApiServer, tmp_path: Path, mode: str
) -> None:
    assert KUBECTL is not None
    text = "\n---\n".join(yaml.safe_dump(d) for d in autoscaling_docs(mode))
    rc, out = await kubectl(
        api, tmp_path, "apply", "--dry-run=client", "--validate=false", "-f", "-", stdin=text
    )
    assert rc == 0, out
    assert out.count("(dry run)") == (3 if mode == "hpa" else 2), out


def test_an_unknown_mode_fails_the_render() -> None:
    values = {"autoscaling": {"enabled": True, "mode": "vpa", "classes": CLASSES}}
    with pytest.raises(TemplateError, match=r"autoscaling\.mode must be hpa or keda"):
        render_chart(CHART, release="vllm", namespace="llm", values=values)
