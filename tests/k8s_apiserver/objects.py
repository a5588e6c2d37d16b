"""Builders for the objects tests put into :class:`~tests.k8s_apiserver.FakeApiServer`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Obj = dict[str, Any]


def pod(
    name: str,
    ip: str | None = "10.0.0.1",
    *,
    labels: Mapping[str, str] | None = None,
    ready: bool = True,
    deleting: bool = False,
    annotations: Mapping[str, str] | None = None,
    namespace: str = "default",
    host_ip: str | None = None,
) -> Obj:
    """A Pod as kubelet would report it (``status.podIP``, ``hostIP``, ``Ready`` condition)."""
    meta: Obj = {"name": name, "namespace": namespace, "labels": dict(labels or {"app": "vllm"})}
    if annotations:
        meta["annotations"] = dict(annotations)
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: Obj = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip:
        status["podIP"] = ip
    if host_ip:
        status["hostIP"] = host_ip
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "server", "image": "vllm"}]},
        "status": status,
    }


def pool_v1(
    name: str = "pool",
    *,
    selector: Mapping[str, str] | None = None,
    ports: Sequence[int] = (8000,),
    namespace: str = "default",
) -> Obj:
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": dict(selector or {"app": "vllm"})},
            "targetPorts": [{"number": p} for p in ports],
            "endpointPickerRef": {"name": f"{name}-epp", "port": {"number": 9002}},
        },
    }


def pool_v1alpha2(
    name: str = "pool",
    *,
    selector: Mapping[str, str] | None = None,
    port: int = 8000,
    namespace: str = "default",
) -> Obj:
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": dict(selector or {"app": "vllm"}),
            "targetPortNumber": port,
            "extensionRef": {"name": f"{name}-epp"},
        },
    }


def inference_model(
    name: str,
    model_name: str,
    *,
    pool: str = "pool",
    created: str | None = None,
    namespace: str = "default",
) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace}
    if created:
        meta["creationTimestamp"] = created
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "kind": "InferenceModel",
        "metadata": meta,
        "spec": {
            "modelName": model_name,
            "criticality": "Standard",
            "poolRef": {"name": pool},
        },
    }


async def eventually(
    predicate: Callable[[], bool], *, within: float = 10.0, interval: float = 0.02
) -> None:
    """Wait until ``predicate()`` holds; AssertionError after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached within timeout")
        await asyncio.sleep(interval)
