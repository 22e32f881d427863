"""Layer faults found by review: arguments, dtypes, empty batches, zero reflections, caches,
saved constants and ill-conditioned periodic kernels."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brute_force import perturb_
from normflows_emerging import (
    EmergingConv2d,
    GlowStep,
    MaskedAffineAutoregressiveConv2d,
    PeriodicConv2d,
    QR1x1,
    SquareAutoregressiveConv2d,
)
from normflows_emerging.mixing import MAFMixing

LAYERS = {
    "qr": lambda: QR1x1(3),
    "emerging": lambda: EmergingConv2d(3),
    "emerging_plu": lambda: EmergingConv2d(3, one_by_one="plu"),
    "periodic": lambda: PeriodicConv2d(3),
    "autoregressive": lambda: SquareAutoregressiveConv2d(3, 2, flip=True),
    "maf": lambda: MaskedAffineAutoregressiveConv2d(3, 6),
}


@pytest.mark.parametrize(
    "build,error,message",
    [
        (lambda: EmergingConv2d(True), ValueError, "num_channels must be a positive int"),
        (lambda: EmergingConv2d(3, kernel_size=True), ValueError, "kernel_size must be an odd int"),
        (lambda: QR1x1(True), ValueError, "num_channels must be a positive int"),
        (lambda: QR1x1(3, True), ValueError, "num_reflections must be an int >= 0"),
        (lambda: QR1x1(3, -1), ValueError, "num_reflections must be an int >= 0"),
        (lambda: PeriodicConv2d(True), ValueError, "num_channels must be a positive int"),
        (lambda: PeriodicConv2d(3, kernel_size=True), ValueError, "kernel_size must be an odd int"),
        (lambda: PeriodicConv2d(3, kernel_size=2), ValueError, "kernel_size must be an odd int"),
        (lambda: PeriodicConv2d(3, bias="no"), TypeError, "bias must be True or False"),
        (
            lambda: MaskedAffineAutoregressiveConv2d(3, hidden_channels=True),
            ValueError,
            "hidden_channels must be a positive int",
        ),
        (lambda: MaskedAffineAutoregressiveConv2d(3.0), ValueError, "num_channels must be"),
        (
            lambda: MaskedAffineAutoregressiveConv2d(3, reverse="no"),
            TypeError,
            "reverse must be True or False",
        ),
        (
            lambda: SquareAutoregressiveConv2d(3, 2, flip="no"),
            TypeError,
            "flip must be True or False",
        ),
        (lambda: SquareAutoregressiveConv2d(3, True), ValueError, "size must be a positive int"),
    ],
)
def test_bad_constructor_arguments_are_named(build, error, message):
    with pytest.raises(error, match=message):
        build()


@pytest.mark.parametrize(
    "build",
    [
        lambda: QR1x1(np.int64(3), np.int32(2)),
        lambda: EmergingConv2d(np.int64(3), np.int64(3)),
        lambda: PeriodicConv2d(np.int64(3), kernel_size=np.int64(3)),
        lambda: SquareAutoregressiveConv2d(np.int64(3), np.int64(2), dilation=np.int64(2)),
        lambda: MaskedAffineAutoregressiveConv2d(np.int64(3), np.int64(6)),
    ],
)
def test_numpy_ints_are_accepted_as_python_ints(build):
    layer = perturb_(build().double())
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    y, log_det = layer.inverse(x)
    x_back, log_det_back = layer(y)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(log_det + log_det_back, torch.zeros(2, dtype=torch.float64))
    assert "np." not in repr(layer) and "numpy" not in repr(layer)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_a_type_error_naming_the_supported_dtypes(name, dtype):
    layer = LAYERS[name]()
    x = torch.randn(2, 3, 5, 4)
    for model, given in [(layer, x.to(dtype)), (layer.to(dtype), x.to(dtype))]:
        for direction in (model.inverse, model.forward):
            with pytest.raises(TypeError, match="float32 and float64"):
                direction(given)


@pytest.mark.parametrize("name", ["emerging", "autoregressive", "maf"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_weight_entries_the_mask_drops_never_reach_the_output(name, value):
    """Breaker's report: an inf/NaN in a weight entry the mask drops (unused, no gradient)
    made the density direction all NaN (weight * mask = inf * 0) while the sampling direction,
    which never reads the entry, stayed finite. Both directions now ignore such entries."""
    torch.manual_seed(0)
    layer = perturb_(LAYERS[name]().double(), 0.1).eval()
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = layer.inverse(x), layer(x)
        masked = [m for m in layer.modules() if isinstance(getattr(m, "mask", None), torch.Tensor)]
        assert masked
        for module in masked:
            module.weight.masked_fill_(module.mask == 0, value)
        got = layer.inverse(x), layer(x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("layout", ["sparse_coo", "sparse_csr"])
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_inputs_are_a_type_error_naming_the_layout(name, layout):
    """Sparse inputs failed inside torch (aten::fill_, reshape, add(sparse, dense)) in every
    layer; the layers, the solve and the model now name the layout."""
    from normflows_emerging import build_multiscale_flow, solve_autoregressive

    x = torch.randn(2, 3, 5, 4)
    given = x.to_sparse() if layout == "sparse_coo" else x.to_sparse_csr(dense_dim=2)
    layer = LAYERS[name]()
    for direction in (layer.inverse, layer.forward):
        with pytest.raises(TypeError, match="dense \\(strided\\) tensor, got layout"):
            direction(given)
    kernel = torch.zeros(3, 3, 2, 2)
    kernel[:, :, -1, -1] = torch.eye(3)
    for y, k in [(given, kernel), (x, kernel.to_sparse())]:
        with pytest.raises(TypeError, match="dense \\(strided\\) tensor, got layout"):
            solve_autoregressive(y, k)
    model = build_multiscale_flow((3, 4, 4), 1, 1, 4)
    with pytest.raises(TypeError, match="dense \\(strided\\) tensor, got layout"):
        model.log_prob(torch.rand(2, 3, 4, 4).to_sparse(), None)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("shape", [(0, 3, 5, 4), (2, 3, 0, 4), (2, 3, 4, 0)])
def test_empty_batches_give_empty_results_in_both_directions(name, shape):
    layer = LAYERS[name]()
    x = torch.randn(shape)
    for direction in (layer.inverse, layer.forward):
        if name == "periodic" and 0 in shape[2:]:
            with pytest.raises(ValueError, match="needs images of at least 3x3"):
                direction(x)
            continue
        y, log_det = direction(x)
        assert y.shape == x.shape and log_det.shape == (shape[0],)
        assert torch.equal(log_det, torch.zeros(shape[0]))


@pytest.mark.parametrize("emerging", [False, True])
def test_a_zero_reflection_vector_is_an_error_in_both_directions(emerging):
    layer = EmergingConv2d(3) if emerging else QR1x1(3)
    qr = layer.one_by_one if emerging else layer
    with torch.no_grad():
        qr.reflections[1] = 0
    x = torch.randn(2, 3, 5, 4)
    for direction in (layer.inverse, layer.forward):
        with pytest.raises(torch.linalg.LinAlgError, match="reflection vector 1 is zero"):
            direction(x)
    with torch.no_grad():
        qr.reflections[1, 0] = float("nan")
    with pytest.raises(torch.linalg.LinAlgError, match="reflection vector 1 is zero or not finite"):
        layer.inverse(x)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_reflections_do_not_depend_on_the_vectors_lengths(scale):
    """A reflection depends on the direction only: tiny or huge float32 vectors neither
    underflow nor overflow."""
    layer = perturb_(QR1x1(4))
    expected = layer.orthogonal()
    with torch.no_grad():
        layer.reflections.mul_(scale)
    torch.testing.assert_close(layer.orthogonal(), expected)


@pytest.mark.parametrize("name", ["weight", "weight_inverse"])
def test_changing_a_returned_qr_matrix_does_not_change_the_layer(name):
    layer = perturb_(QR1x1(3)).eval()
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():  # eval mode without gradients: the layer caches W and W^-1
        expected_y, expected_x = layer.inverse(x)[0], layer(x)[0]
        getattr(layer, name)().mul_(0)
        torch.testing.assert_close(layer.inverse(x)[0], expected_y)
        torch.testing.assert_close(layer(x)[0], expected_x)
        torch.testing.assert_close(layer.weight() @ layer.weight_inverse(), torch.eye(3))


def test_autoregressive_constants_are_not_saved_and_old_checkpoints_cannot_replace_them():
    layer = perturb_(SquareAutoregressiveConv2d(3, 2).double())
    state = layer.state_dict()
    assert set(state) == {"weight", "bias", "raw_log_d"}
    # A checkpoint of the time these buffers were saved, with corrupted values.
    old = dict(
        state,
        mask=torch.zeros(3, 3, 2, 2, dtype=torch.float64),
        corner_diagonal=torch.zeros(3, 3, 2, 2, dtype=torch.float64),
    )
    loaded = SquareAutoregressiveConv2d(3, 2).double()
    loaded.load_state_dict(old, strict=True)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(loaded.inverse(x), layer.inverse(x))
    y, _ = loaded.inverse(x)
    torch.testing.assert_close(loaded(y)[0], x)


def test_maf_masks_are_not_saved_and_old_checkpoints_cannot_replace_them():
    layer = perturb_(MaskedAffineAutoregressiveConv2d(2, 4).double())
    state = layer.state_dict()
    assert not any(key.endswith("mask") for key in state)
    old = dict(
        state,
        **{
            f"{conv}.mask": torch.ones_like(getattr(layer, conv).mask)
            for conv in ("conv_in", "conv_hidden", "conv_out")
        },
    )
    loaded = MaskedAffineAutoregressiveConv2d(2, 4).double()
    loaded.load_state_dict(old, strict=True)
    x = torch.randn(2, 2, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(loaded.inverse(x), layer.inverse(x))
    y, _ = loaded.inverse(x)
    torch.testing.assert_close(loaded(y)[0], x)


def _periodic_1x1(matrix, dtype):
    layer = PeriodicConv2d(2, kernel_size=1, bias=False).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(matrix, dtype=torch.float64)[:, :, None, None])
    return layer


def test_periodic_refuses_a_kernel_too_ill_conditioned_for_float32():
    """cond ~ 4e6: float32 would lose about 8% of a sample; float64 keeps 1e-9."""
    matrix = [[1.0, 1.0], [1.0, 1.0 + 1e-6]]
    z = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    with pytest.raises(torch.linalg.LinAlgError, match=r"K̂\(0, 0\) is singular or too ill"):
        _periodic_1x1(matrix, torch.float32)(z.float())
    layer = _periodic_1x1(matrix, torch.float64)
    x, _ = layer(z)
    expected = torch.einsum(
        "oc,bchw->bohw", torch.linalg.inv(torch.tensor(matrix, dtype=torch.float64)), z
    )
    torch.testing.assert_close(x, expected, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(F.conv2d(x, layer.weight), z)


@pytest.mark.parametrize("flip", [False, True])
def test_a_huge_dilation_reads_only_the_corner_tap_in_both_directions(flip):
    layer = perturb_(SquareAutoregressiveConv2d(3, 2, flip=flip, dilation=10**9).double())
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    y, log_det = layer.inverse(x)
    corner = layer.causal_kernel()[:, :, -1, -1]
    if flip:  # the flipped layer applies the corner tap reversed in both channel axes
        corner = corner.flip(0, 1)
    torch.testing.assert_close(
        y, torch.einsum("oc,bchw->bohw", corner, x) + layer.bias.view(1, -1, 1, 1)
    )
    torch.testing.assert_close(log_det, torch.linalg.slogdet(corner)[1].expand(2) * 20)
    torch.testing.assert_close(layer(y)[0], x)


@pytest.mark.parametrize("backend", ["torch", "compiled", "naive"])
def test_second_derivatives_through_the_solve(backend):
    """The sampling direction is twice differentiable (the solve's backward is a solve and a
    convolution, both differentiable): gradgradcheck in float64, with respect to the input and
    the parameters."""
    layer = perturb_(SquareAutoregressiveConv2d(2, 2, flip=True, solver=backend).double())
    z = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in layer.named_parameters()]

    def sample(z, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (z,))[0]

    assert torch.autograd.gradgradcheck(sample, (z, *layer.parameters()))


@pytest.mark.parametrize(
    "build,error,message",
    [
        (lambda: MAFMixing(True), ValueError, "num_channels must be a positive int"),
        (lambda: MAFMixing(2, 0), ValueError, "maf_hidden_channels must be a positive int"),
        (lambda: GlowStep(4, 8, scale="no"), TypeError, "scale must be True or False"),
        (lambda: GlowStep(4, 8, net_actnorm=1), TypeError, "net_actnorm must be True or False"),
    ],
)
def test_bad_step_arguments_are_named(build, error, message):
    with pytest.raises(error, match=message):
        build()
