"""kvroute: an inference-aware gateway (Endpoint Picker for Envoy ext_proc) for LLM server pools."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kvroute")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["__version__"]
