"""Lease leader election: the pure expiry rule, and two electors racing on the fake API server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from kvroute.k8s.leader import Decision, LeaderElector, LeaseObserver, LeaseRecord
from tests.k8s_apiserver import FakeApiServer
from tests.k8s_apiserver.fixtures import client_for
from tests.k8s_apiserver.objects import eventually

pytestmark = pytest.mark.timeout(30)

LEASE = "epp-default-pool.gateway-api-inference-extension.sigs.k8s.io"


def rec(holder: str, renew: str = "t1", duration: float = 15) -> LeaseRecord:
    return LeaseRecord(holder=holder, duration=duration, renew_time=renew, transitions=0)


@pytest.mark.parametrize(
    ("record", "seen_at", "now", "expected"),
    [
        (None, 0.0, 0.0, Decision.CREATE),
        (rec("me"), 0.0, 100.0, Decision.RENEW),
        (rec("other"), 0.0, 1.0, Decision.FOLLOW),
        (rec("other"), 0.0, 15.0, Decision.ACQUIRE),
        (rec(""), 0.0, 0.0, Decision.ACQUIRE),
    ],
    ids=["no-lease", "ours", "live-other", "expired-other", "released"],
)
def test_decide(record: LeaseRecord | None, seen_at: float, now: float, expected: Decision) -> None:
    obs = LeaseObserver()
    obs.observe(record, seen_at)
    assert obs.decide("me", now) is expected


def test_expiry_counts_from_when_the_record_last_changed_locally() -> None:
    """A renewal (new renew_time) restarts the clock; re-reading an unchanged record does not."""
    obs = LeaseObserver()
    obs.observe(rec("other", "t1"), 0.0)
    obs.observe(rec("other", "t1"), 10.0)  # same record read again
    assert obs.decide("me", 15.0) is Decision.ACQUIRE
    obs.observe(rec("other", "t2"), 14.0)  # holder renewed
    assert obs.decide("me", 15.0) is Decision.FOLLOW
    assert obs.decide("me", 29.0) is Decision.ACQUIRE


def test_rejects_inconsistent_timings() -> None:
    with pytest.raises(ValueError):
        LeaderElector(
            None,  # type: ignore[arg-type]
            name="x",
            namespace="d",
            identity="a",
            lease_duration=1,
            renew_deadline=2,
        )


def elector(api: FakeApiServer, identity: str) -> LeaderElector:
    return LeaderElector(
        client_for(api),
        name=LEASE,
        namespace="default",
        identity=identity,
        # Short, but with slack for a loaded 2-core CI box: a renewal may be late by >1 s
        # before a healthy leader loses the lease.
        lease_duration=2.0,
        renew_deadline=1.5,
        retry_period=0.1,
    )


@contextlib.asynccontextmanager
async def running(e: LeaderElector) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(e.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await e._client.close()


def holder(api: FakeApiServer) -> str | None:
    lease = api.get("coordination.k8s.io/v1", "Lease", LEASE)
    return None if lease is None else lease["spec"].get("holderIdentity")


async def test_one_leader_and_release_on_cancel_hands_over(api: FakeApiServer) -> None:
    a, b = elector(api, "a"), elector(api, "b")
    async with running(a) as task_a, running(b):
        await asyncio.wait_for(a.leading.wait(), 5)
        await asyncio.sleep(0.3)  # several rounds: b must keep following
        assert (a.is_leader, b.is_leader) == (True, False)
        assert holder(api) == "a"
        task_a.cancel()  # ReleaseOnCancel
        with contextlib.suppress(asyncio.CancelledError):
            await task_a
        assert not a.is_leader
        # b takes over before a's 2 s lease would have expired (the release emptied it)
        await asyncio.wait_for(b.leading.wait(), 1.9)
        assert holder(api) == "b"
        lease = api.get("coordination.k8s.io/v1", "Lease", LEASE)
        assert lease is not None
        assert lease["spec"]["leaseTransitions"] == 1


async def test_crashed_leader_is_replaced_after_lease_expiry(api: FakeApiServer) -> None:
    """The leader loses its API connection (its client is closed: nothing it sends arrives)."""
    a, b = elector(api, "a"), elector(api, "b")
    async with running(a), running(b):
        await asyncio.wait_for(a.leading.wait(), 5)
        await a._client.close()  # a can neither renew nor release any more
        await eventually(lambda: b.is_leader, within=5)
        await eventually(lambda: not a.is_leader, within=5)  # renew deadline passed
        assert holder(api) == "b"
        assert b.transitions == 1


async def test_a_third_party_holder_is_followed(api: FakeApiServer) -> None:
    """A lease taken over by someone else (fresh record) is followed, not renewed."""
    a = elector(api, "a")
    try:
        assert await a.try_acquire_or_renew() is True
        lease = api.get("coordination.k8s.io/v1", "Lease", LEASE)
        assert lease is not None
        lease["spec"]["holderIdentity"] = ""  # someone else released and ...
        api.apply(lease)
        lease["spec"]["holderIdentity"] = "z"  # ... a third party grabbed it
        api.apply(lease)
        # a sees a record held by "z": a fresh observation, so it follows instead of renewing.
        assert await a.try_acquire_or_renew() is False
        assert holder(api) == "z"
    finally:
        await a._client.close()


@pytest.mark.parametrize("released", [False, True], ids=["both-create", "both-take-released"])
async def test_racing_candidates_exactly_one_wins(api: FakeApiServer, released: bool) -> None:
    """Two rounds at once: whether they interleave (409 on create/replace) or not, one wins."""
    a, b = elector(api, "a"), elector(api, "b")
    try:
        if released:
            assert await a.try_acquire_or_renew() is True
            await a.release()
            a._observer = type(a._observer)()  # forget, so a competes as a newcomer
        results = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
        assert sorted(results) == [False, True]
        assert holder(api) == ("a" if results[0] else "b")
    finally:
        await a._client.close()
        await b._client.close()


async def test_renew_on_the_period_acquire_on_a_jittered_one(api: FakeApiServer) -> None:
    """client-go: the leader renews every RetryPeriod; a candidate retries the acquire after
    ``RetryPeriod * (1 + rand * 1.2)`` (JitterFactor 1.2), so standbys do not poll in step."""
    e = elector(api, "a")
    waits = [e.next_wait() for _ in range(300)]
    assert all(0.1 <= w <= 0.22 + 1e-12 for w in waits)
    assert max(waits) - min(waits) > 0.1  # jittered, not a fixed period
    e.leading.set()
    assert e.next_wait() == 0.1
    await e._client.close()
