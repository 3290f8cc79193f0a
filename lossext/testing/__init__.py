"""Test and benchmark support shipped with lossext: the table of ops (OpInfo)."""
from .opinfo import OP_DB, OpInfo, SampleInput, ErrorInput, op_by_name

__all__ = ["OP_DB", "OpInfo", "SampleInput", "ErrorInput", "op_by_name"]
