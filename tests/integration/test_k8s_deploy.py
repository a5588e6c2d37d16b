"""Deployment artefacts: the manifests and the Helm chart go through ``kubectl`` against the fake
API server, their InferencePools validate against our CRDs, their EndpointPickerConfig parses
with kvroute's own loader, and the controller picks up a pool applied with ``kubectl``.

``kubectl apply --dry-run=client`` needs an API server for discovery and for the "does it
exist?" GETs; the fake one answers both (with ``--validate=false``: it serves no OpenAPI). The
tests skip with a reason where ``kubectl`` is not installed (Debian package ``kubernetes-client``
or Google's ``kubectl``). ``helm`` has no Debian package or PyPI wheel, so the chart is rendered
with :mod:`tests.k8s_apiserver.helmlite`; ``test_helm_template_matches_helmlite`` compares it
with real ``helm template`` wherever ``helm`` is on PATH (skipped otherwise).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvroute.api import RESOURCE_KINDS
from kvroute.backoff import Backoff
from kvroute.config.epp_config import parse_epp_config
from kvroute.datastore.store import Datastore
from kvroute.k8s.controller import PoolController
from kvroute.k8s.resources import PoolRef
from tests.k8s_apiserver import FakeApiServer
from tests.k8s_apiserver.fixtures import client_for, running_api
from tests.k8s_apiserver.helmlite import render_chart
from tests.k8s_apiserver.objects import eventually, pod
from tests.k8s_apiserver.openapi import validate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "deploy" / "crds"
MANIFESTS = ROOT / "deploy" / "manifests"
CHART = ROOT / "deploy" / "charts" / "kvroute-epp"
KUBECTL = shutil.which("kubectl")
HELM = shutil.which("helm")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not installed (apt-get install kubernetes-client)"
)


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    async with running_api() as server:
        yield server


async def kubectl(
    api: FakeApiServer, tmp: Path, *args: str, stdin: str | None = None
) -> tuple[int, str]:
    assert KUBECTL is not None
    cfg = tmp / "kubeconfig"
    cfg.write_text(yaml.safe_dump(api.kubeconfig()))
    env = {"KUBECONFIG": str(cfg), "HOME": str(tmp), "PATH": os.environ.get("PATH", "")}
    proc = await asyncio.create_subprocess_exec(
        KUBECTL, *args, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 30)
    return proc.returncode or 0, out.decode()


def docs_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for v in crd["spec"]["versions"]:
            if f"{crd['spec']['group']}/{v['name']}" == api_version and (
                crd["spec"]["names"]["kind"] == kind
            ):
                return dict(v["schema"]["openAPIV3Schema"])
    raise KeyError((api_version, kind))


def check_inference_objects(docs: list[dict[str, Any]]) -> int:
    """Validate every Inference* object against its CRD and the pydantic model; count them."""
    n = 0
    for d in docs:
        key = (d["apiVersion"], d["kind"])
        if key not in RESOURCE_KINDS:
            continue
        _, errors, pruned = validate(d, crd_schema(*key))
        assert (errors, pruned) == ([], []), d["metadata"]["name"]
        RESOURCE_KINDS[key].model_validate(d, by_alias=True, by_name=False)
        n += 1
    return n


def check_configmaps(docs: list[dict[str, Any]]) -> None:
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    config = parse_epp_config(cm["data"]["config.yaml"], "configmap")
    assert [p.plugin_ref for p in config.scheduling_profiles[0].plugins][:3] == [
        "queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer",
    ]  # fmt: skip


def manifest_docs() -> list[dict[str, Any]]:
    return [d for p in sorted(MANIFESTS.glob("*.yaml")) for d in docs_of(p.read_text())]


def test_manifests_are_consistent() -> None:
    docs = manifest_docs()
    assert check_inference_objects(docs) == 2
    check_configmaps(docs)
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["grpc"] == {"port": 9003, "service": "readiness"}
    assert deploy["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    (svc,) = [d for d in docs if d["kind"] == "Service"]
    assert 9002 in [p["port"] for p in svc["spec"]["ports"]]
    (pool,) = [d for d in docs if d["kind"] == "InferencePool"]
    assert pool["spec"]["endpointPickerRef"]["name"] == svc["metadata"]["name"]
    (role,) = [d for d in docs if d["kind"] == "Role"]
    verbs = {v for r in role["rules"] for v in r["verbs"]}
    assert "delete" not in verbs  # least privilege: nothing is ever deleted
    assert "*" not in verbs


@needs_kubectl
async def test_kubectl_dry_run_of_crds_and_manifests(api: FakeApiServer, tmp_path: Path) -> None:
    rc, out = await kubectl(
        api,
        tmp_path,
        "apply",
        "--dry-run=client",
        "--validate=false",
        "-f",
        str(CRDS),
        "-f",
        str(MANIFESTS),
    )
    assert rc == 0, out
    expected = len(manifest_docs()) + len(list(CRDS.glob("*.yaml")))
    assert out.count("(dry run)") == expected, out
    assert api.objects("v1", "ConfigMap") == []  # a dry run stores nothing


def chart_docs(**values: Any) -> list[dict[str, Any]]:
    rendered = render_chart(CHART, release="vllm", namespace="llm", values=values)
    return [d for text in rendered.values() for d in docs_of(text)]


def _args(docs: list[dict[str, Any]]) -> list[str]:
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    return list(deploy["spec"]["template"]["spec"]["containers"][0]["args"])


@pytest.mark.parametrize(
    ("values", "ha", "group", "pool_kind_version"),
    [
        ({}, False, "inference.networking.k8s.io", "inference.networking.k8s.io/v1"),
        (
            {"inferenceExtension": {"replicas": 3}},
            True,
            "inference.networking.k8s.io",
            "inference.networking.k8s.io/v1",
        ),
        (
            {"inferencePool": {"apiVersion": "inference.networking.x-k8s.io/v1alpha2"}},
            False,
            "inference.networking.x-k8s.io",
            "inference.networking.x-k8s.io/v1alpha2",
        ),
    ],
    ids=["defaults", "ha-replicas", "legacy-v1alpha2"],
)
def test_chart_renders(
    values: Mapping[str, Any], ha: bool, group: str, pool_kind_version: str
) -> None:
    docs = chart_docs(**values)
    args = _args(docs)
    assert ("--ha-enable-leader-election" in args) is ha
    assert f"--pool-group={group}" in args
    assert "--pool-name=vllm" in args
    (pool,) = [d for d in docs if d["kind"] == "InferencePool"]
    assert pool["apiVersion"] == pool_kind_version
    assert check_inference_objects(docs) == 1
    check_configmaps(docs)
    (role,) = [d for d in docs if d["kind"] == "Role"]
    assert ["epp-llm-vllm.gateway-api-inference-extension.sigs.k8s.io"] in [
        r.get("resourceNames") for r in role["rules"]
    ]


def test_chart_active_active_replicas_sync_instead_of_electing() -> None:
    docs = chart_docs(
        inferenceExtension={
            "replicas": 3,
            "activeActive": {"enabled": True, "keySecret": "pool-sync-key"},
        }
    )
    args = _args(docs)
    assert "--ha-enable-leader-election" not in args
    assert {"--sync-port=5557", "--sync-key-file=/sync-key/pool.key_secret"} <= set(args)
    assert "--sync-lease-group=vllm" in args
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    assert deploy["spec"]["replicas"] == 3
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert {"name": "sync", "containerPort": 5557} in pod["containers"][0]["ports"]
    (vol,) = [v for v in pod["volumes"] if v["name"] == "sync-key"]
    assert vol["secret"]["secretName"] == "pool-sync-key"
    (role,) = [d for d in docs if d["kind"] == "Role"]
    assert any(
        "list" in r["verbs"] and "delete" in r["verbs"] and "resourceNames" not in r
        for r in role["rules"]
    )


def test_chart_without_pool_and_with_extras() -> None:
    docs = chart_docs(
        inferencePool={"create": False},
        inferenceExtension={
            "extraArgs": ["--refresh-metrics-interval=100ms"],
            "env": [{"name": "X", "value": "1"}],
            "nodeSelector": {"gpu": "none"},
        },
    )
    assert not [d for d in docs if d["kind"] == "InferencePool"]
    assert "--refresh-metrics-interval=100ms" in _args(docs)
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    spec = deploy["spec"]["template"]["spec"]
    assert {"name": "X", "value": "1"} in spec["containers"][0]["env"]
    assert spec["nodeSelector"] == {"gpu": "none"}


@needs_kubectl
async def test_kubectl_dry_run_of_the_rendered_chart(api: FakeApiServer, tmp_path: Path) -> None:
    rendered = render_chart(
        CHART, release="vllm", namespace="default", values={"inferenceExtension": {"replicas": 2}}
    )
    text = "\n---\n".join(rendered.values())
    rc, out = await kubectl(
        api, tmp_path, "apply", "--dry-run=client", "--validate=false", "-f", "-", stdin=text
    )
    assert rc == 0, out
    assert out.count("(dry run)") == len(docs_of(text)), out


@pytest.mark.skipif(HELM is None, reason="helm not installed (no Debian package or PyPI wheel)")
async def test_helm_template_matches_helmlite(tmp_path: Path) -> None:
    assert HELM is not None
    proc = await asyncio.create_subprocess_exec(
        HELM, "template", "vllm", str(CHART), "--namespace", "llm",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(docs_of(out.decode()), key=key) == sorted(chart_docs(), key=key)


@needs_kubectl
async def test_pool_applied_with_kubectl_is_served(api: FakeApiServer, tmp_path: Path) -> None:
    """``kubectl apply`` (for real) of the sample pool, then the controller routes to its pods."""
    rc, out = await kubectl(
        api, tmp_path, "apply", "--validate=false", "-f", str(MANIFESTS / "inferencepool.yaml")
    )
    assert rc == 0, out
    api.apply(pod("vllm-0", "10.1.0.1", labels={"app": "vllm-llama3-8b-instruct"}))
    store = Datastore()
    client = client_for(api)
    ctl = PoolController(client, store, pool=PoolRef("vllm-pool"), backoff=Backoff(0.05, 0.2))
    task = asyncio.create_task(ctl.run())
    try:
        await eventually(lambda: [e.hostport for e in store.endpoints()] == ["10.1.0.1:8000"])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
