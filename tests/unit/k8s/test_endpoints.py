"""Pod → endpoint rules (pure): readiness, deletion, selector, ranks, active-ports, diffs."""

from __future__ import annotations

import pytest
from lightkube.resources.core_v1 import Pod

from kvroute.k8s.endpoints import (
    ACTIVE_PORTS_ANNOTATION,
    EndpointSpec,
    PodInfo,
    PoolSpec,
    PoolSpecError,
    desired_endpoints,
    diff,
    parse_endpoint_selector,
    parse_ports,
    pod_info_from_object,
    pool_spec_from_object,
)
from tests.k8s_apiserver.objects import pod, pool_v1, pool_v1alpha2

SPEC = PoolSpec(selector={"app": "vllm"}, target_ports=(8000, 8001))


def info(name: str = "p", **kw: object) -> PodInfo:
    base: dict[str, object] = {
        "name": name,
        "namespace": "default",
        "ip": "10.0.0.1",
        "ready": True,
        "deleting": False,
        "labels": {"app": "vllm"},
        "annotations": {},
    }
    base.update(kw)
    return PodInfo(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pod_info", "expected"),
    [
        (info(), {"p-rank-0": 8000, "p-rank-1": 8001}),
        (info(ready=False), {}),
        (info(deleting=True), {}),
        (info(ip=None), {}),
        (info(labels={"app": "other"}), {}),
        (info(labels={"app": "vllm", "extra": "x"}), {"p-rank-0": 8000, "p-rank-1": 8001}),
        (info(annotations={ACTIVE_PORTS_ANNOTATION: "8001"}), {"p-rank-1": 8001}),
        (
            info(annotations={ACTIVE_PORTS_ANNOTATION: "8000, 8001,9999"}),
            {"p-rank-0": 8000, "p-rank-1": 8001},
        ),
        (info(annotations={ACTIVE_PORTS_ANNOTATION: ""}), {}),
        (info(annotations={ACTIVE_PORTS_ANNOTATION: "junk"}), {"p-rank-0": 8000, "p-rank-1": 8001}),
    ],
    ids=[
        "ready",
        "unready",
        "terminating",
        "no-ip-yet",
        "labels-no-longer-match",
        "superset-labels",
        "active-ports-narrows-keeps-rank",
        "active-ports-unknown-port-ignored",
        "active-ports-empty-means-none",
        "active-ports-unparsable-ignored",
    ],
)
def test_desired_endpoints_per_pod(pod_info: PodInfo, expected: dict[str, int]) -> None:
    got = desired_endpoints(SPEC, [pod_info])
    assert {n: e.port for n, e in got.items()} == expected
    assert all(e.address == "10.0.0.1" for e in got.values())


def test_no_spec_means_no_endpoints() -> None:
    assert desired_endpoints(None, [info()]) == {}


def test_endpoint_carries_pod_labels() -> None:
    ep = desired_endpoints(SPEC, [info(labels={"app": "vllm", "role": "decode"})])["p-rank-0"]
    assert dict(ep.labels) == {"app": "vllm", "role": "decode"}


def _ep(name: str, ip: str = "10.0.0.1", port: int = 8000, **labels: str) -> EndpointSpec:
    return EndpointSpec(name, ip, port, labels or {"app": "vllm"})


@pytest.mark.parametrize(
    ("current", "desired", "upserts", "removals"),
    [
        ({}, {"a": _ep("a")}, ["a"], []),
        ({"a": _ep("a")}, {}, [], ["a"]),
        ({"a": _ep("a")}, {"a": _ep("a")}, [], []),
        ({"a": _ep("a")}, {"a": _ep("a", ip="10.0.0.2")}, ["a"], []),
        ({"a": _ep("a")}, {"a": _ep("a", role="x")}, ["a"], []),
        ({"a": _ep("a"), "b": _ep("b")}, {"b": _ep("b"), "c": _ep("c")}, ["c"], ["a"]),
    ],
    ids=["add", "remove", "unchanged", "new-ip", "new-labels", "mixed"],
)
def test_diff(
    current: dict[str, EndpointSpec],
    desired: dict[str, EndpointSpec],
    upserts: list[str],
    removals: list[str],
) -> None:
    d = diff(current, desired)
    assert [e.name for e in d.upserts] == upserts
    assert list(d.removals) == removals
    assert d.empty == (not upserts and not removals)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("app=vllm", {"app": "vllm"}), (" a=b , c=d ", {"a": "b", "c": "d"}), ("k=", {"k": ""})],
    ids=["one", "two-with-spaces", "empty-value"],
)
def test_parse_endpoint_selector(text: str, expected: dict[str, str]) -> None:
    assert parse_endpoint_selector(text) == expected


@pytest.mark.parametrize(
    "text", ["", "novalue", "=v", "a==b"], ids=["empty", "no-eq", "no-key", "double-eq"]
)
def test_parse_endpoint_selector_rejects(text: str) -> None:
    with pytest.raises(PoolSpecError):
        parse_endpoint_selector(text)


def test_parse_ports() -> None:
    assert parse_ports("8000, 8001,") == (8000, 8001)
    with pytest.raises(PoolSpecError):
        parse_ports("80a")


@pytest.mark.parametrize(
    ("selector", "ports"),
    [
        ({}, (8000,)),
        ({"a": "b"}, ()),
        ({"a": "b"}, (8000, 8000)),
        ({"a": "b"}, tuple(range(1, 10))),
        ({"a": "b"}, (0,)),
    ],
    ids=["empty-selector", "no-ports", "duplicate-port", "nine-ports", "port-zero"],
)
def test_pool_spec_rejects(selector: dict[str, str], ports: tuple[int, ...]) -> None:
    with pytest.raises(PoolSpecError):
        PoolSpec(selector=selector, target_ports=ports)


def test_pool_spec_equality_ignores_mapping_type() -> None:
    a = PoolSpec(selector={"a": "b"}, target_ports=(1,))
    assert a == PoolSpec(selector={"a": "b"}, target_ports=(1,))
    assert a != PoolSpec(selector={"a": "c"}, target_ports=(1,))
    assert hash(a) == hash(PoolSpec(selector={"a": "b"}, target_ports=(1,)))


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (pool_v1(ports=(8000, 8002)), PoolSpec({"app": "vllm"}, (8000, 8002))),
        (pool_v1alpha2(port=9000, selector={"x": "y"}), PoolSpec({"x": "y"}, (9000,))),
    ],
    ids=["v1", "v1alpha2"],
)
def test_pool_spec_from_object(obj: dict[str, object], expected: PoolSpec) -> None:
    assert pool_spec_from_object(obj) == expected


def test_pod_info_from_lightkube_pod() -> None:
    """Decodes through lightkube's own Pod model, as the watch delivers it."""
    obj = pod(
        "p",
        "10.1.2.3",
        labels={"app": "vllm"},
        deleting=True,
        annotations={ACTIVE_PORTS_ANNOTATION: "8000"},
    )
    got = pod_info_from_object(Pod.from_dict(obj, lazy=False))
    assert got == PodInfo(
        name="p",
        namespace="default",
        ip="10.1.2.3",
        ready=True,
        deleting=True,
        labels={"app": "vllm"},
        annotations={ACTIVE_PORTS_ANNOTATION: "8000"},
    )
    unready = pod_info_from_object(Pod.from_dict(pod("q", None, ready=False), lazy=False))
    assert (unready.ready, unready.ip, unready.host_ip) == (False, None, "")


def test_node_address_comes_from_host_ip_and_a_move_is_a_change() -> None:
    """``status.hostIP`` reaches the endpoint (the DCGM DaemonSet is scraped there)."""
    got = pod_info_from_object(
        Pod.from_dict(pod("p", "10.1.2.3", host_ip="192.168.0.7"), lazy=False)
    )
    assert got.host_ip == "192.168.0.7"
    desired = desired_endpoints(SPEC, [got])
    assert {e.node_address for e in desired.values()} == {"192.168.0.7"}
    moved = desired_endpoints(SPEC, [info("p", ip="10.1.2.3", host_ip="192.168.0.8")])
    change = diff(desired, moved)
    assert [e.node_address for e in change.upserts] == ["192.168.0.8", "192.168.0.8"]
