"""The triton backend checks each kernel variant once per device and dtype before it uses it:
here with the kernels in Triton's interpreter on CPU tensors that take the GPU's code path
(``accelerator_path``), and with a copy of the kernels made wrong on purpose (the bias added
instead of subtracted)."""

import sys
import threading
import warnings
import weakref

import pytest
import torch

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.usefixtures("interpreted_triton")

import normflows_emerging.backends.triton_self_check as triton_self_check  # noqa: E402
import normflows_emerging.backends.triton_solve as triton_solve  # noqa: E402
from brute_force import perturb_  # noqa: E402
from dispatch_count import DispatchCount, accelerator_path  # noqa: E402
from normflows_emerging import EmergingConv2d, use_backend  # noqa: E402
from normflows_emerging.backends.triton_self_check import (  # noqa: E402
    ENVIRONMENT_VARIABLE,
    TOLERANCE,
    TritonSelfCheckError,
)
from normflows_emerging.solve import solve_autoregressive  # noqa: E402
from solve_cases import random_causal_kernel  # noqa: E402
from triton_offline import KERNELS, edited_kernels, kernels_source, load_kernels  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_checks(monkeypatch):
    """No outcome of another test: every variant is checked again here."""
    monkeypatch.setattr(triton_self_check, "_outcomes", weakref.WeakKeyDictionary())


@pytest.fixture
def wrong_bias(monkeypatch):
    """A copy of the kernels that adds the bias instead of subtracting it, in use."""
    source = kernels_source()
    right = "acc = acc - bias_row[None, :]"
    assert source.count(right) == 1
    module = edited_kernels(source.replace(right, "acc = acc + bias_row[None, :]"))
    monkeypatch.setitem(sys.modules, KERNELS, module)
    return module


def emerging_layer(channels=3):
    torch.manual_seed(1)
    return perturb_(EmergingConv2d(channels, 3)).eval()


def sample(layer, z, backend):
    with torch.no_grad(), use_backend(backend):
        return layer(z)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_kernels_pass_with_room(dtype):
    """On the check problem the kernels agree with the float64 wavefront far inside the
    tolerance (a miscompiled kernel, like the sign error below, is off by about 1)."""
    kernels = load_kernels(True)
    margin = {torch.float32: 1e-6, torch.float64: 1e-14}[dtype]
    assert triton_solve._check_solve(kernels, CPU, dtype, False) <= margin < TOLERANCE[dtype]
    for has_mix in (False, True):
        assert triton_solve._check_step(kernels, CPU, dtype, has_mix, False) <= margin


def test_a_wrong_kernel_is_caught_said_once_and_not_used(wrong_bias, monkeypatch):
    layer, z = emerging_layer(), torch.randn(2, 3, 4, 5)
    expected = sample(layer, z, "torch")
    with accelerator_path():
        with pytest.warns(RuntimeWarning, match="self-check") as record:
            first = sample(layer, z, "triton")
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # said once
            second = sample(layer, z, "triton")
    [message] = [str(w.message) for w in record if "self-check" in str(w.message)]
    assert "the fused emerging step with W^-1 in float32 is off by" in message
    assert f"triton {triton.__version__} on cpu (Triton's interpreter)" in message
    assert ENVIRONMENT_VARIABLE in message
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)
    # the kernel is wrong indeed: used without the check, the sample is far off
    monkeypatch.setattr(triton_self_check, "kernel_passed", lambda *args: True)
    with accelerator_path():
        unchecked = sample(layer, z, "triton")
    assert (unchecked - expected).abs().max() > 0.1


def test_the_solve_variant_passes_on_its_own(wrong_bias):
    """The solve has no bias: its check passes, and a failed variant does not stop the others."""
    kernel = random_causal_kernel(3, 2, torch.float64)
    y = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with accelerator_path(), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        x = solve_autoregressive(y, kernel, 1, "triton")
    torch.testing.assert_close(x, solve_autoregressive(y, kernel, 1, "torch"))


def test_the_variable_makes_it_an_error_on_every_call(wrong_bias, monkeypatch):
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "Error ")
    layer, z = emerging_layer(), torch.randn(1, 3, 3, 3)
    with accelerator_path():
        for _ in range(2):
            with pytest.raises(TritonSelfCheckError, match=r"off by .* \(tolerance 0.0001\)"):
                sample(layer, z, "triton")


def test_a_bad_value_of_the_variable_is_named(monkeypatch):
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "strict")
    kernel = random_causal_kernel(2, 2, torch.float32)
    with pytest.raises(ValueError, match=f"{ENVIRONMENT_VARIABLE} must be 'warn'.*'strict'"):
        solve_autoregressive(torch.randn(1, 2, 3, 3), kernel, 1, "triton")


def test_a_check_that_raises_counts_as_failed(monkeypatch):
    def broken(*args):
        raise RuntimeError("no binary for this device")

    monkeypatch.setattr(triton_solve, "_check_solve", broken)
    kernel = random_causal_kernel(2, 2, torch.float32)
    y = torch.randn(1, 2, 3, 3)
    with pytest.warns(RuntimeWarning, match="failed with .*RuntimeError: no binary"):
        x = solve_autoregressive(y, kernel, 1, "triton")
    torch.testing.assert_close(x, solve_autoregressive(y, kernel, 1, "torch"))


def test_later_calls_read_no_value_on_the_host():
    """The check reads its result once; the calls after it look their variant up only."""
    kernel = random_causal_kernel(3, 2, torch.float32)
    y = torch.randn(1, 3, 4, 4)
    with accelerator_path():
        with DispatchCount() as first:
            solve_autoregressive(y, kernel, 1, "triton")
        with DispatchCount() as second:
            solve_autoregressive(y, kernel, 1, "triton")
    assert first.syncs == {"_local_scalar_dense": 1}
    assert second.total_syncs == 0


def test_threads_run_one_check_and_launch_only_after_it(monkeypatch):
    """Four threads make their first solve at once: one runs the check while the others wait;
    no kernel is launched for them before it has passed."""
    checks, launches = [], []
    check_done, release = threading.Event(), threading.Event()
    check, launch = triton_solve._check_solve, triton_solve._launch_solve
    interpreter = threading.Lock()  # Triton's interpreter runs one launch at a time

    def slow_check(*args):
        checks.append(threading.get_ident())
        release.wait(60)  # the other threads arrive meanwhile
        error = check(*args)
        check_done.set()
        return error

    def recorded_launch(kernels, y, kernel, x, dilation, config):
        launches.append((config["BLOCK_C"], check_done.is_set()))
        with interpreter:
            launch(kernels, y, kernel, x, dilation, config)

    monkeypatch.setattr(triton_solve, "_check_solve", slow_check)
    monkeypatch.setattr(triton_solve, "_launch_solve", recorded_launch)
    kernel = random_causal_kernel(12, 2, torch.float32)
    ys = [torch.randn(1, 12, 3, 4) for _ in range(4)]
    results = [None] * 4

    def solve(i):
        results[i] = solve_autoregressive(ys[i], kernel, 1, "triton")

    threads = [threading.Thread(target=solve, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    while not checks:
        threading.Event().wait(0.01)
    threading.Event().wait(0.2)
    assert launches == []  # everybody waits for the check
    release.set()
    for thread in threads:
        thread.join(120)
    assert len(checks) == 1
    # the check's own launch (blocks of 8 channels), then the four calls' (16), after it passed
    assert launches[0] == (8, False)
    assert launches[1:] == [(16, True)] * 4
    for y, x in zip(ys, results):
        torch.testing.assert_close(x, solve_autoregressive(y, kernel, 1, "torch"))


def test_an_interrupted_check_leaves_no_outcome(monkeypatch):
    calls = []

    def interrupted(*args):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(triton_solve, "_check_solve", interrupted)
    kernel = random_causal_kernel(2, 2, torch.float32)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            solve_autoregressive(torch.randn(1, 2, 3, 3), kernel, 1, "triton")
    assert calls == [1, 1]  # checked again
