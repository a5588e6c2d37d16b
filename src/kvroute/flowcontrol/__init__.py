"""Flow control: hold requests in the EPP, in priority bands with fairness between flows.

Layering: above scheduling's types and the datastore, below request control. The sans-IO core
is :mod:`~kvroute.flowcontrol.queues` (bands, flows, capacity, TTL, the dispatch decision);
:mod:`~kvroute.flowcontrol.runtime` is the asyncio shell the director awaits;
:mod:`~kvroute.flowcontrol.build` turns the ``flowControl`` config section into both.
"""
