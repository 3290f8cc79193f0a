"""Autograd helpers shared by every op family."""
import torch


def refuse_double_backward(loss_name, backward_ops):
    """Registers, for each lossext backward op, an autograd formula that raises: the fused
    backward kernels have no derivative of their own, so double backward is not supported."""
    def backward(ctx, *grads):
        raise NotImplementedError(f"lossext.{loss_name}: double backward is not supported")

    def setup(ctx, inputs, output):
        pass

    for op_name in backward_ops:
        torch.library.register_autograd(f"lossext::{op_name}", backward, setup_context=setup)
