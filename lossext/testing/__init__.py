"""Test and benchmark support shipped with lossext: the table of ops (OpInfo), built from every
family's rows (lossext/<family>/opinfo.py), and the benchmark harness (lossext.testing.benchmark)."""
from .opinfo import OpInfo, SampleInput, ErrorInput, op_by_name, op_db
from .variants import forced_cpu_isa

__all__ = ["OP_DB", "OpInfo", "SampleInput", "ErrorInput", "op_by_name", "op_db", "forced_cpu_isa"]


def __getattr__(name):  # OP_DB is built on first use (the families' rows import lossext.testing)
    if name == "OP_DB":
        return op_db()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
