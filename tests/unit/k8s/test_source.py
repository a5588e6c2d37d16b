"""``KubernetesEndpointSource`` from settings: modes, flag validation, configuration errors,
and upstream's per-service health answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kvroute.errors import ConfigError
from kvroute.k8s.endpoints import PoolSpec
from kvroute.k8s.resources import GROUP_X, PoolRef
from kvroute.k8s.source import KubernetesEndpointSource
from kvroute.settings import EppSettings


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


def test_pool_mode(kubeconfig: Path) -> None:
    s = EppSettings(
        pool_name="p", pool_namespace="ns", pool_group=GROUP_X, ha_enable_leader_election=True
    )
    src = KubernetesEndpointSource.from_settings(s)
    assert src.pool == PoolRef("p", "ns", GROUP_X)
    assert src.leader_election
    assert src.standalone is None


def test_standalone_mode(kubeconfig: Path) -> None:
    s = EppSettings(
        endpoint_selector="app=a,tier=b", endpoint_target_ports=(8000, 8001), pool_namespace="ns"
    )
    src = KubernetesEndpointSource.from_settings(s)
    assert src.standalone == PoolSpec({"app": "a", "tier": "b"}, (8000, 8001))
    assert src.namespace == "ns"


@pytest.mark.parametrize(
    "settings",
    [
        EppSettings(pool_name="p", pool_group="example.com"),
        EppSettings(endpoint_selector="app", endpoint_target_ports=(8000,)),
        EppSettings(endpoint_selector="app=a"),  # no ports
        EppSettings(
            endpoint_selector="app=a", endpoint_target_ports=(8000,), ha_enable_leader_election=True
        ),  # the Lease is named after a pool
    ],
    ids=["unknown-group", "bad-selector", "no-ports", "ha-without-pool"],
)
def test_bad_flags_are_config_errors(kubeconfig: Path, settings: EppSettings) -> None:
    with pytest.raises(ConfigError):
        KubernetesEndpointSource.from_settings(settings)


def test_missing_cluster_configuration_fails_at_startup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="KUBECONFIG"):
        KubernetesEndpointSource.from_settings(EppSettings(pool_name="p"))


@pytest.mark.parametrize(
    ("leader_election", "service", "expected"),
    [
        (False, "", False),
        (False, "liveness", False),
        (True, "liveness", True),
        (True, "readiness", False),
        (True, "envoy.service.ext_proc.v3.ExternalProcessor", False),
    ],
    ids=["plain", "plain-liveness", "ha-liveness", "ha-readiness", "ha-ext-proc"],
)
def test_health_before_sync(leader_election: bool, service: str, expected: bool) -> None:
    """Before the first sync nothing is ready; with HA, liveness never depends on it."""
    src = KubernetesEndpointSource(
        pool=PoolRef("p"), leader_election=leader_election, client_factory=lambda: None
    )  # type: ignore[arg-type,return-value]
    assert src.serving(service) is expected
    assert src.synced is False
