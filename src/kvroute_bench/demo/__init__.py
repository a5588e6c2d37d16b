"""``kvroute demo``: a simulated pool, the gateway in front, a mixed workload, and round-robin."""
