"""Kubernetes integration of the EPP (the only package here, with ``extproc``, that talks to a
network besides the scraper).

Modules, sans-IO cores first:

* :mod:`~kvroute.k8s.endpoints` — pods + pool spec → endpoints ``<pod>-rank-<i>``, and diffs;
* :mod:`~kvroute.k8s.status` — InferenceModel ``Accepted``/``ModelNameInUse`` conditions;
* :mod:`~kvroute.k8s.reflector` — list-then-watch of one kind into a cache (410/backoff);
* :mod:`~kvroute.k8s.controller` — pool → pods → datastore, model objects, status writes;
* :mod:`~kvroute.k8s.leader` — Lease leader election (active-passive HA);
* :mod:`~kvroute.k8s.source` — the ``EndpointSource`` the composition root runs, health signals;
* :mod:`~kvroute.k8s.resources` — lightkube resource classes, ``PoolRef``, the Lease name;
* :mod:`~kvroute.k8s.crdgen` — ``python -m kvroute.k8s.crdgen`` writes ``deploy/crds``.

Nothing is imported here, so ``import kvroute.k8s`` stays cheap for non-Kubernetes runs.
"""
