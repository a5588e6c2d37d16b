"""``--metrics-endpoint-auth`` with Kubernetes TokenReview, as upstream (issue 20 finding 7).

The EPP runs for real (its metrics server on loopback) and asks the API server with the real
lightkube client, configured the way ``kvroute epp`` finds it (``KUBECONFIG``). The API server is
the repository's fake (``tests/k8s_apiserver``, with the TokenReview and SubjectAccessReview
answers of :mod:`tests.k8s_apiserver.reviews`): no real kube-apiserver can run here.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from kvroute.app import EppApp
from kvroute.errors import ConfigError
from kvroute.settings import EppSettings
from tests.integration.conftest import MiniModelServer, mini_pool
from tests.k8s_apiserver.reviews import ReviewingApiServer

pytestmark = [pytest.mark.integration]


def _settings(server: MiniModelServer) -> EppSettings:
    return EppSettings(
        grpc_port=0,
        grpc_health_port=0,
        metrics_port=0,
        bind_host="127.0.0.1",
        endpoints=(("127.0.0.1", server.port),),
        secure_serving=False,
        metrics_endpoint_auth=True,
    )


async def test_finding7_metrics_auth_asks_the_api_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = MiniModelServer("s")
    async with ReviewingApiServer() as api, mini_pool([server]):
        api.tokens = {"prom-token": "system:serviceaccount:monitoring:prometheus", "nosy": "bob"}
        api.allowed = {("system:serviceaccount:monitoring:prometheus", "/metrics")}
        config = tmp_path / "kubeconfig"
        config.write_text(json.dumps(api.kubeconfig()))
        monkeypatch.setenv("KUBECONFIG", str(config))
        async with EppApp(_settings(server)) as app, httpx.AsyncClient(timeout=30) as c:
            url = f"http://127.0.0.1:{app.ports.metrics}/metrics"

            def auth(token: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {token}"}

            none = await c.get(url)
            assert none.status_code == 401
            assert none.headers["www-authenticate"].startswith("Bearer")
            assert api.reviews == []  # no token: nothing to ask
            ok = await c.get(url, headers=auth("prom-token"))
            assert ok.status_code == 200, ok.text
            assert "inference_pool_ready_pods" in ok.text
            assert api.reviews == ["token", "access"]
            # cached: the next scrapes within the TTL ask nothing
            for _ in range(3):
                assert (await c.get(url, headers=auth("prom-token"))).status_code == 200
            assert api.reviews == ["token", "access"]
            # a path is authorized on its own (SubjectAccessReview per non-resource URL)
            pool = await c.get(url.replace("/metrics", "/pool/state"), headers=auth("prom-token"))
            assert pool.status_code == 403, pool.text
            # a token the API server rejects: 401; authenticated but not allowed: 403
            bad = await c.get(url, headers=auth("stolen"))
            assert bad.status_code == 401
            assert "invalid bearer token" in bad.text
            denied = await c.get(url, headers=auth("nosy"))
            assert denied.status_code == 403
            assert "bob may not get /metrics" in denied.text
            # the API server in trouble: 401 (not 500), not cached, one WARNING
            api.fail_reviews = True
            for _ in range(2):
                err = await c.get(url, headers=auth("new-token"))
                assert err.status_code == 401, err.text
                assert "could not be verified" in err.text
            warnings = [r for r in caplog.records if "TokenReview failed" in r.getMessage()]
            assert len(warnings) == 1
            assert (await c.get(url, headers=auth("prom-token"))).status_code == 200  # cached
            api.fail_reviews = False
            api.tokens["new-token"] = "system:serviceaccount:monitoring:prometheus"
            assert (await c.get(url, headers=auth("new-token"))).status_code == 200
            # the API server gone entirely: still a 401
            await api.stop()
            gone = await c.get(url, headers=auth("other-token"))
            assert gone.status_code == 401


async def test_metrics_auth_without_a_cluster_config_is_a_startup_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    server = MiniModelServer("s")
    async with mini_pool([server]):
        with pytest.raises(ConfigError, match="no Kubernetes configuration"):
            async with EppApp(_settings(server)):
                pass
