"""Brute-force references shared by the tests: dense Jacobians in float64."""

import torch


def dense_log_abs_det(fn, x):
    """log|det d fn(x_b) / d x_b| for every sample b, from the dense Jacobian.

    Args:
      fn: map from a (1, ...) tensor to a tensor of the same shape
      x: float64 tensor of shape (batch, ...)

    Returns:
      tensor of shape (batch,)
    """
    values = []
    for sample in x:
        jac = torch.autograd.functional.jacobian(lambda s: fn(s[None])[0], sample)
        jac = jac.reshape(sample.numel(), sample.numel())
        sign, log_abs = torch.linalg.slogdet(jac)
        assert sign != 0, "Jacobian is singular"
        values.append(log_abs)
    return torch.stack(values)


def perturb_(module, std=0.2, generator=None):
    """Add Gaussian noise to every parameter, to move a layer away from its initial values."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)
    return module
