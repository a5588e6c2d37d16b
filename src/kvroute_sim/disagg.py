"""Prefill/decode disaggregation in the simulator: engine roles, KV transfer time, vLLM's params.

A server has a role (``ServerConfig.role``):

* ``both`` (default): an aggregated vLLM server. It still honours ``kv_transfer_params`` in
  either direction, as vLLM with a ``kv_both`` connector does.
* ``prefill``: a request carrying ``kv_transfer_params.do_remote_decode`` is prefilled (its one
  token generated) and answered with ``kv_transfer_params`` naming where its KV blocks are
  (``remote_engine_id``, ``remote_block_ids``, ``remote_host``, ``remote_port``), as vLLM's
  ``NixlConnector`` producer does.
* ``decode``: a request carrying ``do_remote_prefill`` with valid remote fields skips the prefill
  compute (all but the last prompt token arrive as KV), but becomes schedulable only after the
  transfer: ``latency + prompt_tokens x bytes_per_token / bandwidth`` over the server's link.

``bytes_per_token`` = layers x KV heads x head dim x 2 (K and V) x dtype bytes; the default
shape is Llama-3-8B (32 x 8 x 128 x 2 x 2 B = 128 KiB/token). The link presets are
approximations from spec sheets (see ``docs/simulator.md``), not calibrated measurements.
The prefill server does not hold the blocks until they are pulled (vLLM does, with a timeout).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["both", "prefill", "decode"]


class KVShape(BaseModel):
    """The model dimensions that set the KV cache's bytes per token."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_layers: int = Field(32, ge=1)
    num_kv_heads: int = Field(8, ge=1)
    head_dim: int = Field(128, ge=1)
    dtype_bytes: int = Field(2, ge=1)

    @property
    def bytes_per_token(self) -> int:
        return self.num_layers * self.num_kv_heads * self.head_dim * 2 * self.dtype_bytes


@dataclass(frozen=True, slots=True)
class Link:
    """Effective bandwidth (bytes/s) and per-transfer latency (s) of a KV transfer path."""

    name: str
    bandwidth_bps: float
    latency_s: float

    def transfer_seconds(self, num_bytes: int) -> float:
        return self.latency_s + num_bytes / self.bandwidth_bps


# Approximations (docs/simulator.md gives the sources): ~80% of the peak per-direction rate.
LINKS: Mapping[str, Link] = {
    # NVLink 4 (H100 SXM): 900 GB/s bidirectional, 450 GB/s per direction.
    "nvlink": Link("nvlink", 360e9, 20e-6),
    # InfiniBand NDR / 400 GbE RoCE, one ConnectX-7 NIC per GPU: 50 GB/s.
    "rdma": Link("rdma", 40e9, 100e-6),
    # 100 GbE TCP (no GPUDirect): 12.5 GB/s line rate, kernel copies, ~50% effective.
    "tcp": Link("tcp", 6e9, 1e-3),
}


def link(name: str) -> Link:
    found = LINKS.get(name)
    if found is None:
        raise ValueError(f"unknown KV link {name!r}; known: {', '.join(LINKS)}")
    return found


def remote_decode_requested(body: Mapping[str, Any]) -> bool:
    params = body.get("kv_transfer_params")
    return isinstance(params, Mapping) and params.get("do_remote_decode") is True


def remote_prefill_params(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The body's transfer params when they ask this server to pull a remote prefill."""
    params = body.get("kv_transfer_params")
    if not isinstance(params, Mapping) or params.get("do_remote_prefill") is not True:
        return None
    if not isinstance(params.get("remote_engine_id"), str):
        return None
    blocks = params.get("remote_block_ids")
    if not isinstance(blocks, list) or not blocks:
        return None
    if not isinstance(params.get("remote_host"), str) or not isinstance(
        params.get("remote_port"), int
    ):
        return None
    return params


def producer_params(
    engine_id: str, first_block: int, num_blocks: int, host: str, port: int
) -> dict[str, Any]:
    """What a prefill server returns: vLLM NixlConnector's ``kv_transfer_params``."""
    return {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_engine_id": engine_id,
        "remote_block_ids": list(range(first_block, first_block + num_blocks)),
        "remote_host": host,
        "remote_port": port,
        "tp_size": 1,
    }


@dataclass(slots=True)
class TransferMetrics:
    """Per-role counters: KV handed out (prefill side) and pulled in (decode side)."""

    role: str
    sent: int = 0
    received: int = 0
    received_bytes: int = 0
    transfer_seconds: float = 0.0
    rejected_params: int = 0  # do_remote_prefill with malformed fields: prefilled locally
    phases: dict[str, int] = field(
        default_factory=lambda: {"prefill-only": 0, "remote-kv-decode": 0, "whole": 0}
    )

    def render(self, model: str) -> str:
        lab = f'model_name="{model}",role="{self.role}"'
        lines = [
            "# TYPE kvroute_sim:role_info gauge",
            f"kvroute_sim:role_info{{{lab}}} 1",
            "# TYPE kvroute_sim:kv_transfers_total counter",
            f'kvroute_sim:kv_transfers_total{{{lab},direction="sent"}} {self.sent}',
            f'kvroute_sim:kv_transfers_total{{{lab},direction="received"}} {self.received}',
            "# TYPE kvroute_sim:kv_transfer_bytes_total counter",
            f"kvroute_sim:kv_transfer_bytes_total{{{lab}}} {self.received_bytes}",
            "# TYPE kvroute_sim:kv_transfer_seconds_total counter",
            f"kvroute_sim:kv_transfer_seconds_total{{{lab}}} {self.transfer_seconds}",
            "# TYPE kvroute_sim:kv_transfer_params_rejected_total counter",
            f"kvroute_sim:kv_transfer_params_rejected_total{{{lab}}} {self.rejected_params}",
            "# TYPE kvroute_sim:requests_by_phase_total counter",
        ]
        for phase, n in self.phases.items():
            lines.append(f'kvroute_sim:requests_by_phase_total{{{lab},phase="{phase}"}} {n}')
        return "\n".join(lines) + "\n"
