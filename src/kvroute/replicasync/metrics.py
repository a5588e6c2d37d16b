"""Prometheus view of one replica's sync state, read at scrape time (no hot-path cost).

``kvroute_replica_sync_peers_connected`` (peers heard from within the timeout: 0 means this
replica is partitioned and routes on its local view), ``kvroute_replica_sync_messages_dropped_
total{reason}``, ``kvroute_replica_sync_last_merge_age_seconds`` (-1 before the first merge),
``kvroute_replica_sync_messages_sent_total``, ``..._merged_total``, ``..._peers_expired_total``,
``kvroute_replica_sync_last_expired_peer_silence_seconds`` (the last aged-out peer's silence
when it went: how long a dead replica's counts stayed in this replica's view).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kvroute.replicasync.core import ReplicaSync
from kvroute.replicasync.wire import DropReason

PREFIX = "kvroute_replica_sync"


class SyncCollector(Collector):
    def __init__(self, core: ReplicaSync, clock: Callable[[], float] = time.monotonic) -> None:
        self._core, self._clock = core, clock

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        core, stats = self._core, self._core.stats
        yield GaugeMetricFamily(
            f"{PREFIX}_peers_connected",
            "Peer replicas heard from within the peer timeout (0: partitioned, local view).",
            value=len(core.peers()),
        )
        dropped = CounterMetricFamily(
            f"{PREFIX}_messages_dropped",
            "Sync messages or handshakes dropped, never applied, by reason.",
            labels=["reason"],
        )
        for reason in DropReason:
            dropped.add_metric([reason.value], stats.dropped.get(reason, 0))
        yield dropped
        age = -1.0 if stats.last_merge_at is None else self._clock() - stats.last_merge_at
        yield GaugeMetricFamily(
            f"{PREFIX}_last_merge_age_seconds",
            "Seconds since a peer's message was last merged (-1: never).",
            value=age,
        )
        silence = stats.last_expired_silence_s
        yield GaugeMetricFamily(
            f"{PREFIX}_last_expired_peer_silence_seconds",
            "How long the last aged-out peer had been silent when it was aged out: how long its "
            "counts outlived its last message (-1: none aged out yet).",
            value=-1.0 if silence is None else silence,
        )
        for name, value, text in (
            ("messages_sent", stats.sent, "Sync messages published."),
            ("messages_merged", stats.merged, "Peer sync messages merged."),
            ("peers_expired", stats.expired, "Peers aged out after going silent."),
            ("sequence_gaps", stats.gaps, "Peer messages lost in transit (sequence gaps)."),
        ):
            yield CounterMetricFamily(f"{PREFIX}_{name}", text, value=value)
