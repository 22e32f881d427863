"""Every layer under torch.func agrees with its eager result (issue 27, item 4).

For each layer, both directions, float64, train and eval mode: ``jacrev`` and ``jvp`` with
respect to the input, ``vmap`` over inputs, ``vmap`` over stacked parameters
(``functional_call`` + ``stack_module_state``, an ensemble) and ``grad`` of the log-det with
respect to the parameters, each against the eager result (``torch.autograd`` on the same layer,
or a Python loop) to 1e-7 relative. The data-dependent checks of the eager calls step aside under
a transform: a state they would refuse gives NaN there, never a finite wrong value.
"""

import copy

import pytest
import torch
from torch.func import functional_call, grad, jacrev, jvp, stack_module_state, vmap

from brute_force import perturb_
from normflows_emerging import (
    Chain,
    EmergingConv2d,
    GlowStep,
    MaskedAffineAutoregressiveConv2d,
    PeriodicConv2d,
    QR1x1,
    SquareAutoregressiveConv2d,
    build_glow,
    solve_autoregressive,
)
from normflows_emerging.flows import ActNorm

pytestmark = [
    # torch.func.jvp through torch.fft uses torch.jit.script internally, which warns on this torch
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning"),
]

C, SHAPE = 3, (2, 3, 4, 5)
JACOBIAN_SHAPE = (2, 3, 3, 3)  # dense Jacobians: 54 x 54


def initialised_actnorm():
    layer = ActNorm((C, 1, 1))
    layer.inverse(torch.randn(8, C, 4, 5))
    return layer


LAYERS = {
    "qr": lambda: QR1x1(C),
    "autoregressive": lambda: SquareAutoregressiveConv2d(C, 2),
    "autoregressive flipped dilated": lambda: SquareAutoregressiveConv2d(
        C, 2, flip=True, dilation=2
    ),
    "emerging": lambda: EmergingConv2d(C, 3),
    "emerging k5 without 1x1": lambda: EmergingConv2d(C, 5, one_by_one="none"),
    "emerging plu": lambda: EmergingConv2d(C, 3, one_by_one="plu"),
    "periodic": lambda: PeriodicConv2d(C, 3),
    "periodic fft": lambda: PeriodicConv2d(C, 3, method="fft"),
    "maf": lambda: MaskedAffineAutoregressiveConv2d(C, 6),
    "actnorm": initialised_actnorm,
    "chain": lambda: Chain([QR1x1(C), SquareAutoregressiveConv2d(C, 2, flip=True)]),
    "glow step": lambda: glow_step(),
}


def glow_step():
    step = GlowStep(C, 8, "emerging")
    step.inverse(torch.randn(8, C, 4, 5))  # initialises its ActNorm
    return step


class Direction(torch.nn.Module):
    """A layer's sampling (``forward``) or density (``inverse``) direction as a module's forward,
    so that ``functional_call`` can run either."""

    def __init__(self, layer, direction):
        super().__init__()
        self.layer, self.direction = layer, direction

    def forward(self, x):
        if self.direction == "sampling":
            return self.layer(x)
        return self.layer.inverse(x)


def make(name, mode, seed=0):
    torch.manual_seed(seed)
    layer = perturb_(LAYERS[name]().double(), std=0.1)
    return layer.train(mode == "train")


def assert_relative(actual, expected, tolerance=1e-7):
    """``actual`` equals ``expected`` to ``tolerance`` relative to expected's largest entry."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.abs().max().clamp_min(1e-300)
    error = float((actual - expected).detach().abs().max() / scale.detach())
    assert error <= tolerance, f"relative error {error:.3g}"


NAMES = list(LAYERS)
DIRECTIONS = ["sampling", "density"]
MODES = ["train", "eval"]

matrix = pytest.mark.parametrize(
    "name, direction, mode",
    [(n, d, m) for n in NAMES for d in DIRECTIONS for m in MODES],
)


def inputs(seed=1, shape=SHAPE):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


@matrix
def test_jacrev_with_respect_to_the_input(name, direction, mode):
    fn = Direction(make(name, mode), direction)
    x = inputs(shape=JACOBIAN_SHAPE)
    expected = torch.autograd.functional.jacobian(lambda x: fn(x)[0], x)
    assert_relative(jacrev(lambda x: fn(x)[0])(x), expected)
    expected_log_det = torch.autograd.functional.jacobian(lambda x: fn(x)[1], x)
    assert_relative(jacrev(lambda x: fn(x)[1])(x), expected_log_det)


@matrix
def test_jvp_with_respect_to_the_input(name, direction, mode):
    fn = Direction(make(name, mode), direction)
    x, tangent = inputs(1, JACOBIAN_SHAPE), inputs(2, JACOBIAN_SHAPE)
    jacobian = torch.autograd.functional.jacobian(lambda x: fn(x)[0], x)
    expected = (jacobian.reshape(x.numel(), x.numel()) @ tangent.reshape(-1)).reshape(x.shape)
    (output, log_det), (output_tangent, _) = jvp(fn, (x,), (tangent,))
    eager_output, eager_log_det = fn(x)
    assert_relative(output, eager_output)
    assert_relative(log_det, eager_log_det)
    assert_relative(output_tangent, expected)


# autograd's own batched gradients (torch's older vmap) run the ops without vmap's rules: only
# the solve's plain torch path can; normflows' coupling (glow step) cannot
@pytest.mark.parametrize("strategy", ["reverse-mode", "forward-mode"])
@pytest.mark.parametrize(
    "name, direction", [(n, d) for n in NAMES if n != "glow step" for d in DIRECTIONS]
)
def test_autograds_batched_jacobian(name, direction, strategy):
    """torch.autograd.functional.jacobian(vectorize=True) and gradcheck's batched gradients
    failed in the sampling direction inside torch ("Batching rule not implemented for
    aten::detach", the compiled solve's numpy view; aten::flatten in the solve's backward)."""
    fn = Direction(make(name, "train"), direction)
    x = inputs(shape=JACOBIAN_SHAPE)
    expected = torch.autograd.functional.jacobian(lambda x: fn(x)[0], x)
    batched = torch.autograd.functional.jacobian(
        lambda x: fn(x)[0], x, vectorize=True, strategy=strategy
    )
    assert_relative(batched, expected)


# normflows' AffineCouplingBlock adds the log-dets in place into an unbatched tensor, which vmap
# refuses; the step's own code and its other layers are vmappable.
NOT_VMAPPABLE = {"glow step"}


@matrix
def test_vmap_over_inputs(name, direction, mode):
    if name in NOT_VMAPPABLE:
        pytest.skip("normflows' AffineCouplingBlock cannot be vmapped")
    fn = Direction(make(name, mode), direction)
    xs = torch.stack([inputs(1), inputs(2), inputs(3)])
    outputs, log_dets = vmap(fn)(xs)
    for x, output, log_det in zip(xs, outputs, log_dets):
        expected_output, expected_log_det = fn(x)
        assert_relative(output, expected_output)
        assert_relative(log_det, expected_log_det)


@matrix
def test_vmap_over_stacked_parameters(name, direction, mode):
    if name in NOT_VMAPPABLE:
        pytest.skip("normflows' AffineCouplingBlock cannot be vmapped")
    members = [Direction(make(name, mode, seed), direction) for seed in range(3)]
    x = inputs()
    parameters, buffers = stack_module_state(members)
    base = copy.deepcopy(members[0]).to("meta")
    outputs, log_dets = vmap(lambda p, b: functional_call(base, (p, b), (x,)))(parameters, buffers)
    for member, output, log_det in zip(members, outputs, log_dets):
        expected_output, expected_log_det = member(x)
        assert_relative(output, expected_output)
        assert_relative(log_det, expected_log_det)


@matrix
def test_grad_of_the_log_det_with_respect_to_the_parameters(name, direction, mode):
    fn = Direction(make(name, mode), direction)
    x = inputs()
    parameters = {n: p.detach() for n, p in fn.named_parameters()}
    gradients = grad(lambda p: functional_call(fn, p, (x,))[1].sum())(parameters)
    names, tensors = zip(*fn.named_parameters())
    expected = torch.autograd.grad(fn(x)[1].sum(), tensors, allow_unused=True)
    for n, tensor, e in zip(names, tensors, expected):
        assert_relative(gradients[n], torch.zeros_like(tensor) if e is None else e)


def test_solve_under_nested_transforms_second_derivatives():
    """The solve's backward is itself differentiable (a solve and a convolution): second
    derivatives through the sampling direction are right (hessian against double autograd of
    the unrolled reference solve)."""
    torch.manual_seed(0)
    y = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    kernel = torch.randn(2, 2, 2, 2, dtype=torch.float64)
    kernel[:, :, -1, -1] = torch.tensor([[1.5, 0.0], [0.3, 0.8]], dtype=torch.float64)

    def energy(backend):
        return lambda y: solve_autoregressive(y, kernel, 1, backend).pow(3).sum()

    expected = torch.autograd.functional.hessian(energy("naive"), y)
    for backend in ("torch", "compiled"):
        assert_relative(torch.func.hessian(energy(backend))(y), expected)
        assert_relative(torch.autograd.functional.hessian(energy(backend), y), expected)


def test_checks_step_aside_under_transforms_but_not_in_eager_calls():
    """A zero reflection vector: an eager call raises; under vmap the result is NaN, not a
    finite wrong value."""
    layers = [make("qr", "eval", seed) for seed in range(2)]
    with torch.no_grad():
        layers[1].reflections[0].zero_()
    x = inputs()
    with pytest.raises(torch.linalg.LinAlgError):
        layers[1].inverse(x)
    parameters, buffers = stack_module_state([Direction(layer, "density") for layer in layers])
    base = Direction(copy.deepcopy(layers[0]), "density")
    outputs, _ = vmap(lambda p, b: functional_call(base, (p, b), (x,)))(parameters, buffers)
    assert torch.isfinite(outputs[0]).all()
    assert torch.isnan(outputs[1]).all()


def test_vmap_over_a_models_inputs_both_directions():
    """The model's own value checks (finite images and latents) read a value that vmap cannot
    give and raised torch's data-dependent control-flow error; they step aside under transforms
    as the layers' do. (normflows' MultiscaleFlow.log_prob adds log-dets in place into an
    unbatched tensor, which vmap refuses: inverse_and_log_det is the model's vmappable density.)"""
    torch.manual_seed(0)
    model = build_glow((1, 4, 4), 1, 1, lambda c: EmergingConv2d(c, 3)).double()
    perturb_(model, std=0.1)
    x = inputs(shape=(3, 1, 4, 4))
    z, log_det = model.inverse_and_log_det(x)
    batched_z, batched_log_det = vmap(lambda xi: model.inverse_and_log_det(xi[None]))(x)
    assert_relative(batched_z[0][:, 0], z[0])
    assert_relative(batched_log_det[:, 0], log_det)
    back, sampling_log_det = model.forward_and_log_det(z)
    batched_back, _ = vmap(lambda zi: model.forward_and_log_det([zi[None]]))(z[0])
    assert_relative(batched_back[:, 0], back)
    assert_relative(back, x)
