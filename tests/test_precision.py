"""Exact float32 in the layers: no TF32 whatever the flags, no autocast (issue 17, item 4)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from brute_force import perturb_
from dispatch_count import accelerator_path
from normflows_emerging import (
    EmergingConv2d,
    MaskedAffineAutoregressiveConv2d,
    PeriodicConv2d,
    QR1x1,
    SquareAutoregressiveConv2d,
    build_multiscale_flow,
    use_backend,
)
from normflows_emerging.flows.actnorm import ActNorm
from normflows_emerging.flows.precision import _restore, _settings, ieee_float32

aten = torch.ops.aten
PRODUCTS = {aten.convolution, aten.mm, aten.bmm, aten.addmm, aten.baddbmm, aten.matmul}

LAYERS = {
    "autoregressive": lambda: SquareAutoregressiveConv2d(4, 2),
    "autoregressive flipped": lambda: SquareAutoregressiveConv2d(4, 3, flip=True),
    "emerging": lambda: EmergingConv2d(4, 3),
    "emerging plu": lambda: EmergingConv2d(4, 3, one_by_one="plu"),
    "periodic": lambda: PeriodicConv2d(4, 3),
    "periodic fft": lambda: PeriodicConv2d(4, 3, method="fft"),
    "qr": lambda: QR1x1(4),
    "maf": lambda: MaskedAffineAutoregressiveConv2d(4, 8),
}


def make(name):
    torch.manual_seed(0)
    return perturb_(LAYERS[name](), std=0.05)


def precision_flags():
    """The newer settings, and the older ones as torch reads them (it refuses mixed ones)."""
    newer = (
        torch.backends.cudnn.conv.fp32_precision,
        torch.backends.cudnn.rnn.fp32_precision,
        torch.backends.cuda.matmul.fp32_precision,
    )
    try:
        older = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    except RuntimeError as error:
        older = str(error)
    return newer, older


def assert_no_tf32(flags, where):
    """cuDNN convolutions and cuBLAS products in IEEE float32, as torch reads both APIs."""
    (conv, rnn, matmul), older = flags
    assert conv != "tf32" and rnn != "tf32" and matmul == "ieee", (where, flags)
    assert older == (False, False), (where, flags)


class ProductSpy(TorchDispatchMode):
    """Records the global precision flags at every convolution and matrix product."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in PRODUCTS:
            self.seen.append((func.overloadpacket.__name__, precision_flags()))
        return func(*args, **(kwargs or {}))


def allow_tf32_legacy():
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True


def allow_tf32_matmul_precision():
    torch.set_float32_matmul_precision("medium")


def allow_tf32_new():
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    torch.backends.cudnn.rnn.fp32_precision = "tf32"
    torch.backends.cuda.matmul.fp32_precision = "tf32"


@pytest.fixture
def restore_flags():
    saved = _settings()
    yield
    _restore(saved)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize(
    "allow",
    [allow_tf32_legacy, allow_tf32_matmul_precision, allow_tf32_new],
    ids=lambda f: f.__name__,
)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_products_never_run_in_tf32(name, allow, training, restore_flags):
    """On the GPU path every convolution and matrix product of a layer sees IEEE float32, and
    the user's flags are back afterwards."""
    layer = make(name).train(training)
    x = torch.randn(2, 4, 5, 6)
    allow()
    before = precision_flags()
    with accelerator_path(), use_backend("torch"), ProductSpy() as spy:
        y, _ = layer.inverse(x)
        layer(y)
    assert precision_flags() == before
    assert spy.seen  # the products ran, and under the spy
    for op, flags in spy.seen:
        assert_no_tf32(flags, op)


def test_flags_are_restored_when_the_layer_raises(restore_flags):
    allow_tf32_new()
    before = precision_flags()
    with accelerator_path(), pytest.raises(ValueError):
        QR1x1(4).inverse(torch.randn(1, 3, 2, 2))
    assert precision_flags() == before


def test_ieee_float32_context(restore_flags):
    allow_tf32_legacy()
    with ieee_float32():
        assert_no_tf32(precision_flags(), "inside")
    assert precision_flags() == (("tf32", "tf32", "tf32"), (True, True))


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cpu_bfloat16_autocast_computes_in_float32(name, training):
    """Both directions under autocast: float32 outputs and log-dets, equal to outside autocast."""
    layer = make(name).train(training)
    x = torch.randn(2, 4, 5, 6)
    with torch.no_grad():
        expected = layer.inverse(x), layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = layer.inverse(x), layer(x)
    for (output, log_det), (want, want_log_det) in zip(got, expected):
        assert output.dtype == log_det.dtype == torch.float32
        torch.testing.assert_close(output, want, rtol=0, atol=0)
        torch.testing.assert_close(log_det, want_log_det, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["emerging", "periodic", "qr", "maf"])
def test_lower_precision_input_under_autocast_is_taken_as_float32(name):
    """A bfloat16 input (e.g. an autocast coupling's output) is converted, not refused; outside
    autocast it stays a TypeError."""
    layer = make(name).eval()
    x = torch.randn(2, 4, 5, 6).bfloat16()
    with torch.no_grad():
        expected = layer.inverse(x.float()), layer(x.float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = layer.inverse(x), layer(x)
    for (output, log_det), (want, want_log_det) in zip(got, expected):
        assert output.dtype == log_det.dtype == torch.float32
        torch.testing.assert_close((output, log_det), (want, want_log_det), rtol=0, atol=0)
    with pytest.raises(TypeError, match="float32 and float64"):
        layer(x)


@pytest.mark.parametrize("mixing", ["maf", "1x1"])
def test_a_dtype_that_autocast_lowered_is_named_as_such(mixing):
    """Issue 24: under autocast, sampling a MAF model was refused with `ActNorm ... got
    torch.bfloat16` although the user gave float32: normflows' 1x1 convolution ran under
    autocast. The message says that autocast lowered it."""
    torch.manual_seed(0)
    model = build_multiscale_flow((1, 8, 8), 1, 1, 4, mixing=mixing)
    model.log_prob(torch.rand(2, 1, 8, 8), None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(TypeError, match="torch.autocast .on for cpu. lowered the data"):
            model.sample(2)
    with pytest.raises(TypeError, match=r"float64 tensors only, got dtype torch.bfloat16$"):
        ActNorm((1, 1, 1))(torch.zeros(1, 1, 2, 2, dtype=torch.bfloat16))  # not autocast's


def test_autocast_training_gradients_are_float32():
    layer = make("emerging").train()
    x = torch.randn(2, 4, 5, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, log_det = layer.inverse(x)
        loss = (y**2).sum() - log_det.sum()
    loss.backward()
    expected = make("emerging").train()
    y, log_det = expected.inverse(x)
    ((y**2).sum() - log_det.sum()).backward()
    for p, q in zip(layer.parameters(), expected.parameters()):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
