"""Running kvroute's scheduler inside another program (the benchmark, notebooks, tests).

The entry points that assemble and drive the request path in-process, without gRPC or Envoy: load
an EndpointPickerConfig, build the scheduling layer from it with a plugin registry, parse a
request body and hand it to a :class:`Director`::

    from kvroute.embed import Director, build_scheduling, builtin_epp_config
    from kvroute.sdk import default_registry

The types those take and return (``Endpoint``, ``InferenceRequest``, ``Usage``...) come from
:mod:`kvroute.sdk`. :mod:`kvroute.embed.gateway` adds the real gateway (Envoy + the EPP) for live
runs; it is a separate module so that the in-process scheduler does not load gRPC and the app.
"""

from __future__ import annotations

from kvroute.config.epp_config import (
    BUILTIN_PROFILES,
    KVROUTE_DEFAULT_CONFIG_TEXT,
    builtin_epp_config,
    load_epp_config,
    parse_epp_config,
)
from kvroute.datastore.endpoint import EMPTY_METRICS
from kvroute.datastore.store import Datastore
from kvroute.protocol.openai import ParsedRequest, parse_request
from kvroute.replicasync.core import ReplicaSync
from kvroute.replicasync.wire import Codec as SyncCodec
from kvroute.requestcontrol.director import Director, RoutingDecision
from kvroute.requestcontrol.model_resolution import ResolvedModel
from kvroute.scheduling.builder import SchedulingSetup, build_scheduling
from kvroute.wiring import EppGraph, build_epp

__all__ = [
    "BUILTIN_PROFILES",
    "EMPTY_METRICS",
    "KVROUTE_DEFAULT_CONFIG_TEXT",
    "Datastore",
    "Director",
    "EppGraph",
    "ParsedRequest",
    "ReplicaSync",
    "ResolvedModel",
    "RoutingDecision",
    "SchedulingSetup",
    "SyncCodec",
    "build_epp",
    "build_scheduling",
    "builtin_epp_config",
    "load_epp_config",
    "parse_epp_config",
    "parse_request",
]
