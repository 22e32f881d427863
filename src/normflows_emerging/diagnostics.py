"""Is a trained flow still numerically invertible? Round-trip errors per flow and of the model.

A layer can be invertible in exact arithmetic (finite log-det) and still lose the data in
floating point: when training drifts an emerging convolution's kernels away from diagonal
dominance, its two triangular solves amplify rounding error (issue 9.4 saw a layer with log-det
-532 round-trip with error 1e7 in float32). The log-det cannot show this; running the probe
batch to the latents and back does.

What a user can do when the error is large: sample in float64 (``model.double()``), lower the
learning rate or lengthen the warm-up, and resume from an earlier checkpoint whose error was
small (``metrics.jsonl`` records it at every evaluation).
"""

import contextlib
import math
import warnings

import torch

from .errors import NonFiniteError

# Round-trip error (in data units: images scaled to [0, 1)) above which a model is reported as
# numerically non-invertible; a quarter of one 8-bit intensity level.
INVERSE_ERROR_THRESHOLD = 1e-3


class NumericalInvertibilityWarning(UserWarning):
    """A model's round trip data -> latents -> data loses more than the threshold."""


def non_finite_parameters(model) -> list[str]:
    """Names of a model's parameters that hold a NaN or an infinity (empty: all finite).

    Checked every training step, so all parameters are tested at once (one concatenation, one
    device sync) and only a failing model is searched tensor by tensor.
    """
    named = [(name, p.detach()) for name, p in model.named_parameters()]
    # reshape, not parameters_to_vector's view: parameters may be non-contiguous
    if not named or torch.isfinite(torch.cat([p.reshape(-1) for _, p in named])).all():
        return []
    return [name for name, p in named if not torch.isfinite(p).all()]


def is_checkable(model) -> bool:
    """Whether :func:`inverse_error` can check a model (a normflows model with ``flows``)."""
    return _is_multiscale(model) or _is_normalizing_flow(model)


def _is_multiscale(model):
    return all(hasattr(model, name) for name in ("q0", "flows", "merges", "transform"))


def _is_normalizing_flow(model):
    return all(
        hasattr(model, name)
        for name in ("q0", "flows", "inverse_and_log_det", "forward_and_log_det")
    )


@torch.no_grad()
def inverse_error(model, x) -> dict:
    """Round-trip errors of a normflows model on a probe batch, per flow and for the whole model.

    Each flow's error is ``max |flow.forward(flow.inverse(h)) - h|`` on the input ``h`` it gets
    on the way from ``x`` to the latents (in the units of that input); the model's is
    ``max |forward(inverse(x)) - x|`` in data units. The model runs in the mode it is in, and
    nothing on it is changed (so the check is safe while other threads use the model); put a
    model whose flows behave differently in training (dropout, batch norm) in eval mode first.

    A round trip that cannot be completed is infinitely wrong (error ``inf``): a direction that
    raises ``torch.linalg.LinAlgError`` (a layer of this package whose solve overflows) or
    ``NonFiniteError``, or returns inf or NaN. A flow whose density direction fails or returns
    non-finite values ends the per-flow check there (the flows after it get no input), so it is
    the worst flow.

    Args:
      model: ``normflows.MultiscaleFlow`` or ``normflows.NormalizingFlow``
      x: probe batch in data space, shape (batch, C, H, W) (or the model's data shape)

    Returns:
      dict with ``model`` (float, the model's error), ``flows`` (dict of flow name, as in
      ``model.named_modules()``, to its error) and ``worst_flow`` (name of the largest)

    Raises:
      TypeError: if the model is neither of the two normflows models (see :func:`is_checkable`)
    """
    if not is_checkable(model):
        raise TypeError(
            f"expected a normflows MultiscaleFlow or NormalizingFlow, got {type(model).__name__}"
        )
    flow_errors = _per_flow_errors(model, x)
    model_error = math.inf
    with _failure_is_infinite():
        z, _ = model.inverse_and_log_det(x)
        latents = z if isinstance(z, (list, tuple)) else [z]
        # the model refuses non-finite latents; the round trip is lost either way
        if all(torch.isfinite(part).all() for part in latents):
            x_again, _ = model.forward_and_log_det(z)
            model_error = _max_abs(x_again - x)
    worst = max(flow_errors, key=flow_errors.get) if flow_errors else None
    return {"model": model_error, "flows": flow_errors, "worst_flow": worst}


class _FlowFailed(Exception):
    """A flow's density direction failed: the flows after it cannot be checked."""


@contextlib.contextmanager
def _failure_is_infinite():
    """Swallow the errors of a failing layer (the caller has recorded ``inf`` beforehand)."""
    try:
        yield
    except (torch.linalg.LinAlgError, NonFiniteError):
        pass


def _per_flow_errors(model, x):
    names = {id(m): name for name, m in model.named_modules()}
    errors = {}

    def check(flow, h):
        name = names[id(flow)]
        errors[name] = math.inf
        out = None
        with _failure_is_infinite():
            out, _ = flow.inverse(h)
        if out is None or not torch.isfinite(out).all():
            raise _FlowFailed
        with _failure_is_infinite():
            back, _ = flow.forward(out)
            errors[name] = _max_abs(back - h)
        return out

    try:
        if _is_multiscale(model):
            if model.transform is not None:
                x = check(model.transform, x)
            for i in range(len(model.q0) - 1, -1, -1):
                for flow in reversed(model.flows[i]):
                    x = check(flow, x)
                if i > 0:
                    (x, _), _ = model.merges[i - 1].inverse(x)
        elif _is_normalizing_flow(model):
            for flow in reversed(model.flows):
                x = check(flow, x)
    except _FlowFailed:
        pass
    return errors


def _max_abs(difference):
    # NaN must not compare as small: a round trip that produced NaN is infinitely wrong.
    value = difference.abs().max().item()
    return math.inf if math.isnan(value) else value


def warn_if_not_invertible(errors, where="") -> bool:
    """Warn (``NumericalInvertibilityWarning``) if a model's round-trip error is too large.

    Args:
      errors: result of :func:`inverse_error`
      where: context for the message, e.g. ``"at step 500"``

    Returns:
      whether it warned
    """
    if not errors["model"] > INVERSE_ERROR_THRESHOLD:
        return False
    worst = errors["worst_flow"]
    warnings.warn(
        f"the model is numerically not invertible{' ' + where if where else ''}: round-trip "
        f"error {errors['model']:.3g} > {INVERSE_ERROR_THRESHOLD:g} (data in [0, 1)), worst "
        f"in {worst} ({errors['flows'].get(worst, float('nan')):.3g}); "
        f"samples may be wrong. Remedies: sample in float64, lower the learning rate, or "
        f"resume from an earlier checkpoint",
        NumericalInvertibilityWarning,
        stacklevel=2,
    )
    return True
