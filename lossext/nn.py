"""Loss Modules, flat as torch.nn: every family's Modules (lossext/<family>/modules.py),
holders of hyper-parameters and of the parameters a loss owns (class weights)."""
from ._core.families import collect

__all__ = collect(globals(), "modules")
