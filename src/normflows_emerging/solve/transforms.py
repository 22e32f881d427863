"""Whether a call runs under a ``torch.func`` transform, autograd's batched gradients or
forward-mode AD.

Under ``vmap``, ``grad``, ``jvp`` and ``jacrev`` the tensors a layer sees are wrapped: reading a
value on the host (``.item()``, ``bool(t)``, ``nonzero``) is refused or meaningless, a cached
result would drop their batch dimension or tangent, and the compiled and Triton solves cannot
take them. The layers and solves ask :func:`under_transform` and then take their transform-safe
path: no value checks (a state they would refuse comes out NaN instead), no caches, every solve
through the differentiable, vmappable ``torch.autograd.Function``.
"""

import torch
import torch.autograd.forward_ad as forward_ad


def under_transform(*tensors: torch.Tensor) -> bool:
    """Whether any of ``tensors`` is wrapped by a torch.func transform or carries a forward-mode
    tangent (``torch.autograd.forward_ad``).

    Costs one interpreter-stack lookup and one integer compare outside transforms (the common
    case); torch has no public test for either, so these are the ones torch.func and
    ``forward_ad.unpack_dual`` use.
    """
    functorch = torch._C._functorch
    if functorch.peek_interpreter_stack() is not None and any(
        functorch.is_functorch_wrapped_tensor(t) for t in tensors
    ):
        return True
    if legacy_batched(*tensors):
        return True
    return forward_ad._current_level >= 0 and any(
        forward_ad.unpack_dual(t).tangent is not None for t in tensors
    )


def legacy_batched(*tensors: torch.Tensor) -> bool:
    """Whether any of ``tensors`` is batched by torch's older vmap, which autograd uses for
    batched gradients: ``torch.autograd.grad(..., is_grads_batched=True)``,
    ``torch.autograd.functional.jacobian(..., vectorize=True)`` and ``gradcheck``'s
    ``check_batched_grad``. Only plain torch operations run on such tensors."""
    return any(torch._C._functorch.is_legacy_batchedtensor(t) for t in tensors)
