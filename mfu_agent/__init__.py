"""mfu-agent: GPU telemetry and live model FLOPs utilisation as Prometheus metrics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mfu-agent")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
