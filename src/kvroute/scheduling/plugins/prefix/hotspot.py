"""Anti-hotspot rule: prefix affinity only counts on servers that are not overloaded.

Pure affinity sends every request that shares a system prompt to the one server that cached it
first; its queue grows while the others idle (the llm-d "shared system prompt" hot spot). The
rule here is SGLang's imbalance test applied per server, on the freshest load kvroute knows:

    load(e)      = max(waiting(e) + running(e) + sent_since_scrape(e), inflight(e))
    min_load     = min over the candidates of load(e)
    overloaded(e) <=> load(e) - min_load > abs_slack  and  load(e) > rel_slack * min_load

An overloaded server's prefix score is set to 0, so the load scorers decide among the others;
the chosen one then receives the prefix (PreRequest) and the hot prefix is replicated instead of
queued. A multi-turn session therefore stays on the server that holds its history until that
server is ``abs_slack`` requests *and* ``rel_slack`` times busier than the least loaded one.

``waiting``/``running`` come from the last scrape; ``sent_since_scrape`` and ``inflight`` are the
EPP's own counters (see :class:`~kvroute.datastore.endpoint.EndpointLoad`), which keep the rule
honest between scrapes. Defaults (abs 16, rel 1.5) are deliberately looser than SGLang's library
defaults (32 / 1.1 on router in-flight only): vLLM batches, so a few extra running requests cost
far less than re-prefilling a long shared prefix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from kvroute.datastore.endpoint import Endpoint


class HotspotPolicy(StrEnum):
    NONE = "none"
    LOAD_BOUND = "load-bound"


def endpoint_load(endpoint: Endpoint) -> int:
    """Requests on (or on their way to) ``endpoint``, by the freshest signal available."""
    m = endpoint.metrics
    scraped = m.waiting_queue_size + m.running_queue_size + endpoint.load.sent_since_scrape
    return max(scraped, endpoint.load.inflight)


@dataclass(frozen=True, slots=True)
class HotspotGuard:
    policy: HotspotPolicy = HotspotPolicy.LOAD_BOUND
    abs_slack: float = 16.0
    rel_slack: float = 1.5

    def overloaded(self, endpoints: Sequence[Endpoint]) -> frozenset[str]:
        """Names of the candidates whose prefix affinity is suspended this cycle."""
        got = self._loads_over(endpoints)
        if got is None:
            return frozenset()
        loads, limit = got
        return frozenset([e.name for e, load in zip(endpoints, loads, strict=True) if load > limit])

    def limit(self, endpoints: Sequence[Endpoint]) -> float | None:
        """The load above which a candidate is overloaded this cycle (:func:`endpoint_load`
        ``> limit``), or None when none is: for a caller that only asks about a few candidates,
        which then need not build the whole :meth:`overloaded` set."""
        got = self._loads_over(endpoints)
        return None if got is None else got[1]

    def loads_over(self, endpoints: Sequence[Endpoint]) -> tuple[list[int], float] | None:
        """Every candidate's :func:`endpoint_load` (in candidate order) and :meth:`limit`;
        None when nobody is overloaded."""
        return self._loads_over(endpoints)

    def _loads_over(self, endpoints: Sequence[Endpoint]) -> tuple[list[int], float] | None:
        """Every candidate's load and the overload threshold; None when nobody is overloaded."""
        if self.policy is HotspotPolicy.NONE or len(endpoints) < 2:
            return None
        # endpoint_load() inlined: this runs on every request with a prefix match, and a call
        # per endpoint was a quarter of the default profile's cycle at 100 endpoints (a
        # comprehension, with the two objects bound once each, beats a loop with append)
        loads = [
            s
            if (
                s := (m := e.metrics).waiting_queue_size
                + m.running_queue_size
                + (ld := e.load).sent_since_scrape
            )
            > ld.inflight
            else ld.inflight
            for e in endpoints
        ]
        least = min(loads)
        if max(loads) - least <= self.abs_slack:  # the common case: nobody is far ahead
            return None
        # load - least > abs_slack and load > rel_slack * least, as one threshold
        return loads, max(least + self.abs_slack, self.rel_slack * least)


def held_not_overloaded(
    endpoints: Sequence[Endpoint],
    loads: Sequence[int],
    held: Mapping[str, int],
    total: int,
    limit: float,
) -> dict[str, float]:
    """``held[name] / total`` for the candidates in ``held`` whose load (``loads``, aligned with
    ``endpoints``: :meth:`HotspotGuard.loads_over`) is at most ``limit``: what a prefix scorer
    gives the servers holding blocks, without building the set of every overloaded candidate.
    A name is left out if any candidate of that name is overloaded, as membership in
    :meth:`HotspotGuard.overloaded`."""
    holders = [(e.name, load) for e, load in zip(endpoints, loads, strict=True) if e.name in held]
    over = {name for name, load in holders if load > limit}
    return {name: held[name] / total for name, _ in holders if name not in over}
