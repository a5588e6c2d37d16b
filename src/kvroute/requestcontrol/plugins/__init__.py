"""Request-control plugins: header processors and admitters (upstream ``requestcontrol``)."""
