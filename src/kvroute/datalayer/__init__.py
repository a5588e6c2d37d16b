"""The data layer: what the picker knows about each model server, and how it learns it.

- :mod:`~kvroute.datalayer.prometheus`: sans-IO, selective Prometheus text parsing.
- :mod:`~kvroute.datalayer.mappings`: per-engine metric names (vLLM, SGLang, trtllm-serve,
  Triton TensorRT-LLM), ``engineConfigs`` overrides, page → ``EndpointMetrics``.
- :mod:`~kvroute.datalayer.scraper`: the asyncio collector polling ``/metrics`` per endpoint.
- :mod:`~kvroute.datalayer.staleness`: when a snapshot is too old to trust.
- :mod:`~kvroute.datalayer.kvevents`, :mod:`~kvroute.datalayer.tokenization`: KV-cache events
  and tokenisation for precise prefix routing.
"""
