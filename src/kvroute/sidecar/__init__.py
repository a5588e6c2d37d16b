"""The P/D routing sidecar that runs beside a decode server (``kvroute sidecar``).

``core`` is the sans-IO protocol (what each leg sends, what counts as valid transfer
parameters); ``proxy`` is the aiohttp shell that moves the bytes.
"""
