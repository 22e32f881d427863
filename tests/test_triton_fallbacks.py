"""Where the triton kernels cannot serve a call, the torch wavefront solves it, with the same
values and one warning: more channels than the kernels take, block sizes the device cannot hold,
a launch refused for resources; offsets that may reach 2**31 switch the kernels to int64.
The kernels run in Triton's interpreter, on CPU tensors that take the GPU's code path."""

import warnings

import pytest
import torch

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.usefixtures("interpreted_triton")

import normflows_emerging.backends.triton_solve as triton_solve  # noqa: E402
from brute_force import perturb_  # noqa: E402
from dispatch_count import accelerator_path  # noqa: E402
from normflows_emerging import EmergingConv2d, use_backend  # noqa: E402
from normflows_emerging.backends.triton_device import (  # noqa: E402
    INTERPRETER_LIMITS,
    MAX_CHANNELS,
    DeviceLimits,
    block_sizes,
)
from normflows_emerging.solve import solve_autoregressive  # noqa: E402
from solve_cases import random_causal_kernel  # noqa: E402


@pytest.fixture(autouse=True)
def said_afresh(monkeypatch):
    """Warnings said once in the process are said again in each test."""
    monkeypatch.setattr(triton_solve, "_said", set())


def sample_twice(layer, z):
    """Two eval samples with the triton backend: the first may warn, the second must not."""
    with accelerator_path(), torch.no_grad(), use_backend("triton"):
        with pytest.warns(RuntimeWarning) as record:
            first, _ = layer(z)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            second, _ = layer(z)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    return first, [str(w.message) for w in record if w.category is RuntimeWarning]


def unfused(layer, z):
    with torch.no_grad(), use_backend("torch"):
        return layer(z)[0]


def test_more_channels_than_the_kernels_take():
    """The fused step's wavefront path (biases subtracted, the anti-causal solve mirrored, W^-1
    last) gives the layer's own unfused result, and inverts its density pass."""
    channels = MAX_CHANNELS + 1
    layer = perturb_(EmergingConv2d(channels, 3), std=0.02).double().eval()
    z = torch.randn(2, channels, 2, 3, dtype=torch.float64)
    x, messages = sample_twice(layer, z)
    assert messages == [
        f"the triton kernels take no emerging step with {channels} channels on cpu (more than "
        f"{MAX_CHANNELS} channels): it runs the torch wavefront solve, which gives the same "
        "values more slowly"
    ]
    torch.testing.assert_close(x, unfused(layer, z))
    with torch.no_grad():
        z_back, _ = layer.inverse(x)
    torch.testing.assert_close(z_back, z)


def test_block_sizes_the_device_cannot_hold(monkeypatch):
    tiny = DeviceLimits("a device with 64 bytes of shared memory", shared_memory=64)
    monkeypatch.setattr(triton_solve, "device_limits", lambda device: tiny)
    layer = perturb_(EmergingConv2d(4, 3)).eval()
    z = torch.randn(1, 4, 3, 3)
    x, messages = sample_twice(layer, z)
    assert len(messages) == 1 and "more than a device with 64 bytes" in messages[0]
    torch.testing.assert_close(x, unfused(layer, z))


@pytest.mark.parametrize("variant", ["solve", "emerging step"])
def test_a_launch_refused_for_resources(variant, monkeypatch):
    """``triton.OutOfResources`` (raised before anything runs) for the call's blocks, not for
    the self-check's: one warning, the wavefront's values."""
    launch = triton_solve._launch

    def refusing(kernel, tensor, args, options):
        if options["BLOCK_C"] != triton_solve._CHECK_BLOCKS["BLOCK_C"]:
            raise triton.OutOfResources(232448, 101376, "shared memory")
        launch(kernel, tensor, args, options)

    monkeypatch.setattr(triton_solve, "_launch", refusing)
    if variant == "solve":
        kernel = random_causal_kernel(12, 2, torch.float32)
        y = torch.randn(2, 12, 3, 4)
        with accelerator_path(), pytest.warns(RuntimeWarning) as record:
            x = solve_autoregressive(y, kernel, 1, "triton")
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                solve_autoregressive(y, kernel, 1, "triton")
        messages = [str(w.message) for w in record if w.category is RuntimeWarning]
        torch.testing.assert_close(x, solve_autoregressive(y, kernel, 1, "torch"))
    else:
        layer = perturb_(EmergingConv2d(12, 3)).eval()
        z = torch.randn(2, 12, 3, 4)
        x, messages = sample_twice(layer, z)
        torch.testing.assert_close(x, unfused(layer, z))
    assert messages == [
        f"cpu refused the triton kernel of the {variant} (out of resource: shared memory, "
        f"Required: 232448, Hardware limit: 101376. Reducing block sizes or `num_stages` may "
        f"help.): the {variant} runs the torch wavefront solve there, which gives the same "
        "values more slowly"
    ]


@pytest.mark.parametrize(
    "sizes,wide",
    [
        ((128, 4096, 4095, 3, 1), False),  # C * H * W = 2**31 - 2**19
        ((128, 4096, 4096, 3, 1), True),  # C * H * W = 2**31
        ((1, 46340, 46340, 2, 1), False),  # H * W just below 2**31
        ((1, 1, 2**20, 2, 2**11), True),  # a tap's reach: m * dilation * W = 2**32
        ((2**15, 1, 1, 2, 1), True),  # a kernel of C * C * m * m = 2**32 entries
    ],
)
def test_when_indices_need_64_bits(sizes, wide):
    assert triton_solve.needs_wide_indices(*sizes) == wide


def test_64_bit_indices_give_the_same_values(monkeypatch):
    """Every call made wide (the limit lowered): the int64 kernels, with their own (smaller)
    blocks, solve alike."""
    monkeypatch.setattr(triton_solve, "_INT32_LIMIT", 8)
    wide = block_sizes(5, 4, 6, torch.float64, INTERPRETER_LIMITS, wide=True)
    assert wide != block_sizes(5, 4, 6, torch.float64, INTERPRETER_LIMITS)
    y = torch.empty(2, 5, 4, 6, dtype=torch.float64)
    assert triton_solve._configuration(y, 3, 2, "solve") == dict(wide, WIDE=True)
    kernel = random_causal_kernel(5, 3, torch.float64)
    y = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(
        solve_autoregressive(y, kernel, 2, "triton"), solve_autoregressive(y, kernel, 2, "torch")
    )
    layer = perturb_(EmergingConv2d(5, 3)).double().eval()
    z = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    with torch.no_grad(), use_backend("triton"):
        x, _ = layer(z)
    torch.testing.assert_close(x, unfused(layer, z))
