"""The I/O shell of replica sync: ZeroMQ PUB/SUB, authenticated with CurveZMQ.

Each replica binds one PUB socket (``--sync-port``) and connects one SUB socket to every peer's
PUB (``--peer``, a static list).
Every ``interval_s`` the loop publishes :meth:`ReplicaSync.flush`'s message and ages out silent
peers; received messages go to :meth:`ReplicaSync.merge`. Both directions are authenticated:

* the PUB is a Curve *server* holding the pool's secret key, and its ZAP handler admits only
  subscribers whose public key is authorized (default: the pool key itself), so a stranger can
  neither read the pool's state nor complete a handshake;
* each SUB pins the pool's public key as the server key, so it only accepts data from a
  publisher holding the pool's secret key -- a stranger cannot poison the index;
* on top, every message carries an HMAC keyed with the pool secret (:mod:`.wire`).

A failed handshake (wrong key) is seen on the sockets' monitors and counted as
``messages_dropped_total{reason="unauthenticated"}``. A partitioned replica keeps routing on
its local view; ``peers_connected`` (peers heard from within the timeout) says so.

Membership changes call :meth:`SyncTransport.set_peers` (connect new, disconnect gone): no
restart. Each transport owns its own ``zmq.asyncio.Context``: the ZAP handler is per context.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils.monitor import parse_monitor_message

from kvroute.errors import ConfigError
from kvroute.replicasync.core import ReplicaSync
from kvroute.replicasync.wire import MAX_MESSAGE_BYTES, DropReason

log = logging.getLogger(__name__)

_AUTH_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
)


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """The pool's Curve key pair (z85 bytes) and the public keys allowed to subscribe."""

    public: bytes
    secret: bytes
    authorized: frozenset[bytes]

    @property
    def hmac_key(self) -> bytes:
        return self.secret

    @classmethod
    def load(cls, secret_file: Path, authorized_dir: Path | None = None) -> CurveKeys:
        """Read a ``zmq.auth`` secret certificate and, optionally, a directory of public ones."""
        try:
            public, secret = zmq.auth.load_certificate(secret_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--sync-key-file {secret_file}: {exc}") from exc
        if secret is None:
            raise ConfigError(f"--sync-key-file {secret_file}: no secret key in it")
        allowed = {public}
        if authorized_dir is not None:
            if not authorized_dir.is_dir():
                raise ConfigError(f"--sync-authorized-keys {authorized_dir}: not a directory")
            for path in sorted(authorized_dir.glob("*.key")):
                key, _ = zmq.auth.load_certificate(path)
                allowed.add(key)
        return cls(public, secret, frozenset(allowed))


class _Authorized:
    """ZAP credentials provider: is this client's public key one of ours?"""

    def __init__(self, keys: CurveKeys) -> None:
        self._keys = keys.authorized

    def callback(self, domain: str, key: bytes) -> bool:
        del domain
        return key in self._keys  # a denial shows on the PUB's monitor as a failed handshake


class SyncTransport:
    """Run ``core``'s exchange over ZeroMQ until cancelled (``run()``)."""

    def __init__(
        self,
        core: ReplicaSync,
        keys: CurveKeys,
        *,
        bind: str = "tcp://0.0.0.0:0",
        peers: Iterable[str] = (),
        interval_s: float = 0.005,
    ) -> None:
        self.core = core
        self.keys = keys
        self.interval_s = interval_s
        self._ctx = zmq.asyncio.Context()
        self._auth = AsyncioAuthenticator(self._ctx)
        self._auth.start()
        self._auth.configure_curve_callback("*", credentials_provider=_Authorized(keys))
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.curve_server = True
        self._pub.curve_publickey, self._pub.curve_secretkey = keys.public, keys.secret
        self._pub.setsockopt(zmq.SNDHWM, 1000)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(bind)
        self.endpoint: str = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.curve_serverkey = keys.public
        self._sub.curve_publickey, self._sub.curve_secretkey = keys.public, keys.secret
        self._sub.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES + 64)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._monitors = [self._pub.get_monitor_socket(), self._sub.get_monitor_socket()]
        self._peers: set[str] = set()
        self.set_peers(peers)

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def count_drop(self, reason: DropReason) -> None:
        d = self.core.stats.dropped
        d[reason] = d.get(reason, 0) + 1

    def set_peers(self, peers: Iterable[str]) -> None:
        """Connect to new peers, disconnect from those gone (membership change, no restart)."""
        want = {p for p in peers if p and p != self.endpoint}
        for gone in self._peers - want:
            with contextlib.suppress(zmq.ZMQError):
                self._sub.disconnect(gone)
        for new in want - self._peers:
            self._sub.connect(new)
        if want != self._peers:
            log.info("replica sync peers: %s", sorted(want))
        self._peers = want

    @property
    def peer_endpoints(self) -> frozenset[str]:
        return frozenset(self._peers)

    async def run(self) -> None:
        """Exchange until cancelled, then close the sockets (a crash leaves them open, so a
        supervisor may call ``run`` again)."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._publish_loop())
                tg.create_task(self._receive_loop())
                for mon in self._monitors:
                    tg.create_task(self._monitor_loop(mon))
        except asyncio.CancelledError:
            self.close()
            raise

    async def _publish_loop(self) -> None:
        while True:
            data = self.core.flush()
            if data is not None:
                with contextlib.suppress(zmq.Again):
                    await self._pub.send(data, flags=zmq.NOBLOCK)
            self.core.expire()
            await asyncio.sleep(self.interval_s)

    async def _receive_loop(self) -> None:
        while True:
            data = await self._sub.recv()
            self.core.merge(data)

    async def _monitor_loop(self, mon: zmq.asyncio.Socket) -> None:
        while True:
            event = parse_monitor_message(await mon.recv_multipart())
            if event["event"] in _AUTH_FAILED:
                self.count_drop(DropReason.UNAUTHENTICATED)

    def close(self) -> None:
        if self._ctx.closed:
            return
        self._auth.stop()
        for sock in (self._pub, self._sub):
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
        for mon in self._monitors:
            mon.close(linger=0)
        self._pub.close(linger=0)
        self._sub.close(linger=0)
        self._ctx.term()
        self.core.close()
