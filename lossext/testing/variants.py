"""Running the same call under each compiled CPU variant (lossext.set_cpu_isa)."""
from contextlib import contextmanager

from .._core.library import set_cpu_isa, supported_cpu_isas


@contextmanager
def forced_cpu_isa(isa):
    """Within the block, lossext's CPU loops run instruction set `isa` (see lossext.set_cpu_isa);
    the previous one is restored after it."""
    previous = set_cpu_isa(isa)
    try:
        yield isa
    finally:
        set_cpu_isa(previous)


__all__ = ["forced_cpu_isa", "supported_cpu_isas"]
