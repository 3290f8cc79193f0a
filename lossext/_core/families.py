"""The one list of loss families, and the collection of their names.

A family NAME is the folders csrc/NAME/, lossext/NAME/, include/lossext/NAME.h,
tests/test_NAME.py. Its Python package holds these modules, each optional but `functional`:

  lossext/NAME/__init__.py    docstring; README_ROWS (the family's rows of the README loss table:
                              dicts of loss, paper, functional, modules, optional note)
  lossext/NAME/ops.py         fake kernels and autograd of its raw ops (imported first)
  lossext/NAME/functional.py  the functions; __all__ joins lossext.functional
  lossext/NAME/modules.py     the Modules;   __all__ joins lossext.nn
  lossext/NAME/reference.py   pure-PyTorch references; __all__ joins lossext.reference
  lossext/NAME/opinfo.py      OP_ROWS: its rows of the OpInfo table (lossext.testing.OP_DB)
  lossext/NAME/bench.py       its own benchmark suite (benchmarks/run.py runs it), if the
                              generic OpInfo benchmark does not fit its shapes

Adding a family = creating those files and adding its name here; lossext.functional,
lossext.nn, lossext.reference, the OpInfo table (so the generic tests, `make bench` and
`python -m lossext`), the README loss table and include/lossext/lossext.h pick it up
(the last two through tools/sync_families.py, `make sync`; tests/test_layout.py fails while
they are stale).
"""
import importlib

FAMILIES = (
    "landmark",  # Wing, Adaptive Wing
    "margin",    # SphereFace, CosFace, ArcFace, combined margin, fused normalized linear
    "age",       # Mean-Variance (age estimation)
    "metric",    # Center loss, Triplet-Center loss, triplet (online mining), contrastive
    "detection",  # YOLOv2 region, sigmoid and softmax focal, IoU-family box losses, SSD and RefineDet multibox
    "dense",     # keypoint heatmaps (HRNet JointsMSE with OHKM)
)


def family_module(family, sub, *, optional=False):
    """lossext.<family>.<sub>, or None when optional and the family has no such module."""
    name = f"lossext.{family}.{sub}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if optional and e.name == name:
            return None
        raise


def collect(namespace, sub):
    """Puts every family's lossext.<family>.<sub>.__all__ into `namespace` (a module's
    globals()) and returns the combined __all__. Two families exporting one name is an error."""
    names = []
    owner = {}
    for fam in FAMILIES:
        family_module(fam, "ops", optional=True)  # its registrations, before anything calls the ops
        mod = family_module(fam, sub, optional=(sub != "functional"))
        if mod is None:
            continue
        for n in mod.__all__:
            if n in owner:
                raise ImportError(f"lossext: {n!r} is exported by both the {owner[n]!r} and {fam!r} families")
            owner[n] = fam
            namespace[n] = getattr(mod, n)
            names.append(n)
    return names
