"""Several simulated servers in one event loop, for the CLI and for other teams' tests.

::

    async with SimCluster(n=3, profile="tiny", base_port=0) as cluster:
        cluster.urls            # ["http://127.0.0.1:41234", ...] (ephemeral ports with 0)
        cluster.servers[1]      # a SimServer: .engine, .faults, .kill(), .revive(), .metrics

``base_port=P`` (P > 0) puts server i on port P + i. With ``kv_events_base_port`` set, server i
publishes KV events on ``tcp://127.0.0.1:<kv_events_base_port + i>``. With ``accelerators``
(names or a pool spec such as ``["l4", "h100"]`` or ``"h100:2,l4:1"``, see
:mod:`kvroute_sim.accelerators`) server i runs on the i-th accelerator, cycling.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from kvroute_sim.accelerators import on_accelerator, parse_pool
from kvroute_sim.config import ServerConfig, load_server_config
from kvroute_sim.server.app import SimServer


class SimCluster:
    """N ``SimServer`` s sharing the running event loop."""

    def __init__(
        self,
        n: int = 1,
        *,
        profile: str | None = None,
        base_port: int = 0,
        host: str = "127.0.0.1",
        config: ServerConfig | None = None,
        config_file: str | Path | None = None,
        model: str | None = None,
        loras: Sequence[str] | None = None,
        kv_events_base_port: int | None = None,
        engine_overrides: dict[str, Any] | None = None,
        accelerators: str | Sequence[str] | None = None,
        **server_overrides: Any,
    ) -> None:
        if n < 1:
            raise ValueError("a cluster needs at least one server")
        if config is None:
            overrides: dict[str, Any] = dict(server_overrides)
            if profile is not None:
                overrides["profile"] = profile
            if model is not None:
                overrides["model"] = model
            if loras is not None:
                overrides["loras"] = tuple(loras)
            if engine_overrides:
                overrides["engine"] = engine_overrides
            config = load_server_config(config_file, **overrides)
        self.config = config
        self.servers: list[SimServer] = []
        self.accelerators = parse_pool(tuple(accelerators), n) if accelerators else ["h100"] * n
        for i in range(n):
            cfg = config
            if self.accelerators[i] != "h100":
                engine = on_accelerator(config.engine, self.accelerators[i])
                cfg = cfg.model_copy(update={"engine": engine})
            if kv_events_base_port is not None:
                cfg = cfg.model_copy(
                    update={"kv_events_endpoint": f"tcp://{host}:{kv_events_base_port + i}"}
                )
            port = base_port + i if base_port else 0
            self.servers.append(SimServer(cfg, name=f"sim-{i}", host=host, port=port, seed=i))

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    async def start(self) -> None:
        for s in self.servers:
            await s.start()

    async def stop(self) -> None:
        for s in self.servers:
            await s.stop()

    async def __aenter__(self) -> SimCluster:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
