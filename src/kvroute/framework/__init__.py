"""The framework interfaces: the types and protocols every layer above shares.

Nothing here imports anything of kvroute but :mod:`kvroute.plugins.base` (``Plugin``,
``TypedName``) and :mod:`kvroute.errors`; every other layer may import it.

- :mod:`~kvroute.framework.request`: ``InferenceRequest``, ``ApiKind``, ``Criticality``, ``Usage``.
- :mod:`~kvroute.framework.endpoint`: ``Endpoint``, ``EndpointMetrics``, ``EndpointLoad``.
- :mod:`~kvroute.framework.scheduling`: ``CycleState``/``StateKey``, the Filter/Scorer/Picker/
  ProfileHandler/SaturationDetector protocols and the cycle's result and trace types.
- :mod:`~kvroute.framework.hooks`: the request-lifecycle hooks ``PrepareData``, ``PreRequest``,
  ``ResponseComplete``.

The older module paths (``kvroute.scheduling.request``, ``kvroute.scheduling.interfaces``,
``kvroute.datastore.endpoint``, ``kvroute.requestcontrol.hooks``) re-export these names.
"""
