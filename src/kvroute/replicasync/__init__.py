"""Active-active EPP replicas that share what only each of them knows (issue 17).

* :mod:`~kvroute.replicasync.wire` -- the message format: msgpack, versioned, bounded, with an
  optional HMAC tag; decoding validates everything before anything is applied (sans-IO);
* :mod:`~kvroute.replicasync.core` -- :class:`ReplicaSync`: batches this replica's local
  in-flight deltas and the plugins' replicated entries, merges the peers' (per-peer contribution
  tables, aged out on the receiver's clock) into the datastore (sans-IO);
* :mod:`~kvroute.replicasync.transport` -- the ZeroMQ pub/sub shell with CurveZMQ.
"""

from kvroute.replicasync.core import ReplicaSync, SyncStats
from kvroute.replicasync.wire import MAX_MESSAGE_BYTES, WIRE_VERSION, DropReason

__all__ = ["MAX_MESSAGE_BYTES", "WIRE_VERSION", "DropReason", "ReplicaSync", "SyncStats"]
