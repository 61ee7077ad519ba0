"""Small helpers shared by the loss tests (test_losses*.py): exact constants, float64 tensors, inputs with a
chosen margin, and autograd of a summed loss. Not a test file."""
import math

import torch

LN2 = math.log(2.0)
SP1, SPM1 = math.log1p(math.e), math.log1p(math.exp(-1.0))   # softplus(1), softplus(-1)


def t(*values, dtype=torch.float64, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


def margin_inputs(h, dtype=torch.float64):
    """Four log-prob tensors whose pair margin is exactly h (policy_chosen carries it); leaf = policy_chosen."""
    h = torch.as_tensor(h, dtype=dtype).reshape(-1)
    pc = h.clone().requires_grad_(True)
    zeros = torch.zeros_like(h)
    return pc, zeros.clone(), zeros.clone(), zeros.clone()


def grad_wrt(loss_fn, leaf, *args, **kw):
    losses, _ = loss_fn(*args, **kw)
    (g,) = torch.autograd.grad(losses.sum(), leaf)
    return g
