"""tdx-stress's driver: schedulers, workloads, runner, campaigns and the CLI."""
from core import __version__

__all__ = ["__version__"]
