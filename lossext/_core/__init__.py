"""Shared machinery of every loss family (private).

- library:    loads the compiled kernels (lossext/lib/liblossext.so through lossext._C) and
              reports what the binary holds (build_info, registered_ops, CUDA architectures).
- families:   FAMILIES, the one list of loss families, and the collection of their public
              names into lossext.functional, lossext.nn, lossext.reference and the OpInfo table.
- validation: argument checks that raise TypeError/ValueError naming the argument and value.
- autograd:   autograd helpers shared by the op patterns (refusing double backward).
- pointwise:  the Python half of the element-wise op pattern (csrc/common/pointwise_loss.h).
- reference:  helpers shared by the float64 references.
"""
