"""Leader election on a ``coordination.k8s.io/v1`` Lease (client-go's ``leaderelection``, in small).

Upstream runs the EPP active-passive with ``--ha-enable-leader-election``: every replica watches
the pool, only the leader reports ready, so the Gateway sends traffic to one replica. The Lease is
named as upstream names it (:func:`kvroute.k8s.resources.lease_name`), so kvroute and upstream EPPs
of one pool exclude each other.

Rules, as in client-go:

* expiry is judged by *our* clock: a lease whose record (holder, renew time, transitions) has not
  changed for ``lease_duration`` seconds since we first saw it is expired, whatever the holder's
  wall clock wrote (no cross-node clock-skew trust);
* writes use optimistic concurrency (``metadata.resourceVersion``), so of two candidates racing for
  an expired lease exactly one wins and the other gets 409 Conflict;
* the leader renews every ``retry_period``; if it cannot renew for ``renew_deadline`` it stops
  leading (readiness drops) before anyone else may take over (``renew_deadline < lease_duration``);
* a candidate retries the acquire after a jittered ``retry_period`` (``JitterFactor`` 1.2: a
  delay in ``[retry_period, 2.2 * retry_period]``, :class:`kvroute.backoff.Backoff`), so standbys
  do not poll the Lease in lockstep;
* on cancellation the leader releases the lease (``ReleaseOnCancel``): empty holder and a
  1-second duration, so a successor takes over at once instead of waiting out the lease.

Upstream exits the process when leadership is lost; here the elector drops ``is_leader`` and keeps
competing, and the health service reports NOT_SERVING meanwhile (same effect for the Gateway).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from kvroute.backoff import Backoff

log = logging.getLogger(__name__)


_JITTER_FACTOR = 1.2  # client-go leaderelection.JitterFactor


class Decision(StrEnum):
    CREATE = "create"  # no lease object yet
    RENEW = "renew"  # we hold it
    ACQUIRE = "acquire"  # free or expired: take it over
    FOLLOW = "follow"  # someone else holds a live lease


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The parts of ``Lease.spec`` that identify one renewal."""

    holder: str
    duration: float
    renew_time: str
    transitions: int


@dataclass(slots=True)
class LeaseObserver:
    """Pure expiry bookkeeping: remembers when the record last changed, by the local clock."""

    record: LeaseRecord | None = None
    observed_at: float = 0.0

    def observe(self, record: LeaseRecord | None, now: float) -> None:
        if record != self.record:
            self.record = record
            self.observed_at = now

    def decide(self, identity: str, now: float) -> Decision:
        rec = self.record
        if rec is None:
            return Decision.CREATE
        if rec.holder == identity:
            return Decision.RENEW
        if not rec.holder or now >= self.observed_at + rec.duration:
            return Decision.ACQUIRE
        return Decision.FOLLOW


def _record(lease: Any) -> LeaseRecord:
    spec = lease.spec
    return LeaseRecord(
        holder=spec.holderIdentity or "",
        duration=float(spec.leaseDurationSeconds or 0),
        renew_time=str(spec.renewTime),
        transitions=int(spec.leaseTransitions or 0),
    )


class LeaderElector:
    """Competes for the Lease until cancelled; ``is_leader`` and ``leading`` report the outcome.

    Args:
        client: a lightkube ``AsyncClient``.
        name, namespace: the Lease.
        identity: this replica's holder identity (pod name, or hostname plus a random suffix).
        lease_duration, renew_deadline, retry_period: seconds; client-go defaults are 15/10/2.
        on_change: called with the new leadership state whenever it flips.
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        name: str,
        namespace: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")
        self._client = client
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        # client-go's wait.JitterUntil(..., RetryPeriod, JitterFactor=1.2, ...) for the acquire
        jittered = retry_period * (1 + _JITTER_FACTOR)
        self._acquire_wait = Backoff(
            initial=jittered, maximum=jittered, factor=1.0, minimum=retry_period
        )
        self._on_change = on_change
        self._clock = clock
        self._observer = LeaseObserver()
        self._last_renew = 0.0
        self.leading = asyncio.Event()
        self.transitions = 0  # times this replica became leader

    def next_wait(self) -> float:
        """Seconds to the next round: ``retry_period`` to renew, a jittered one to acquire."""
        return self.retry_period if self.is_leader else self._acquire_wait.delay(0)

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    def _set_leading(self, value: bool) -> None:
        if value == self.is_leader:
            return
        if value:
            self.leading.set()
            self.transitions += 1
            log.info("became leader of lease %s/%s as %s", self.namespace, self.name, self.identity)
        else:
            self.leading.clear()
            log.warning("lost leadership of lease %s/%s", self.namespace, self.name)
        if self._on_change is not None:
            self._on_change(value)

    async def run(self) -> None:
        try:
            while True:
                try:
                    ok = await self.try_acquire_or_renew()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # supervisor loop: an API hiccup is a failed renewal
                    log.warning(
                        "lease %s/%s: %s: %s", self.namespace, self.name, type(exc).__name__, exc
                    )
                    ok = False
                now = self._clock()
                if ok:
                    self._last_renew = now
                    self._set_leading(True)
                elif self.is_leader and now - self._last_renew >= self.renew_deadline:
                    self._set_leading(False)
                await asyncio.sleep(self.next_wait())
        finally:
            if self.is_leader:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.retry_period):
                        await self.release()
                self.leading.clear()
                if self._on_change is not None:
                    self._on_change(False)

    def _spec(self, *, acquire: bool, transitions: int, previous: Any = None) -> LeaseSpec:
        now = dt.datetime.now(dt.UTC)
        acquired = now if acquire or previous is None else previous.acquireTime
        return LeaseSpec(
            holderIdentity=self.identity,
            leaseDurationSeconds=round(self.lease_duration),
            acquireTime=acquired,
            renewTime=now,
            leaseTransitions=transitions,
        )

    async def try_acquire_or_renew(self) -> bool:
        """One round of the election; True when we hold the lease afterwards."""
        try:
            lease = await self._client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            lease = None
        now = self._clock()
        self._observer.observe(None if lease is None else _record(lease), now)
        decision = self._observer.decide(self.identity, now)
        try:
            if decision is Decision.CREATE:
                fresh = Lease(
                    metadata=ObjectMeta(name=self.name, namespace=self.namespace),
                    spec=self._spec(acquire=True, transitions=0),
                )
                created = await self._client.create(fresh)
                self._observer.observe(_record(created), self._clock())
                return True
            if decision is Decision.FOLLOW:
                return False
            assert lease is not None  # CREATE handled the None case
            prev = lease.spec or LeaseSpec()
            transitions = int(prev.leaseTransitions or 0)
            if decision is Decision.ACQUIRE:
                transitions += 1
            lease.spec = self._spec(
                acquire=decision is Decision.ACQUIRE, transitions=transitions, previous=prev
            )
            replaced = await self._client.replace(lease)
            self._observer.observe(_record(replaced), self._clock())
            return True
        except ApiError as exc:
            if exc.status.code in (409, 422):  # someone else wrote first: not ours this round
                return False
            raise

    async def release(self) -> None:
        """Give the lease up (empty holder, 1 s duration) if we still hold it."""
        lease = await self._client.get(Lease, self.name, namespace=self.namespace)
        if lease.spec is None or (lease.spec.holderIdentity or "") != self.identity:
            return
        now = dt.datetime.now(dt.UTC)
        lease.spec = LeaseSpec(
            holderIdentity=None,
            leaseDurationSeconds=1,
            acquireTime=now,
            renewTime=now,
            leaseTransitions=lease.spec.leaseTransitions,
        )
        await self._client.replace(lease)
        log.info("released lease %s/%s", self.namespace, self.name)
