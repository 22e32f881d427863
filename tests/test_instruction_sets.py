"""Every instruction-set path of the compiled solve (kernels.h: "baseline", "avx2", "avx512"),
forced one at a time, against the naive solve; and the accuracy of its float32 sums at large C."""

import copy
import os
import subprocess
import sys

import pytest
import torch

from brute_force import perturb_
from normflows_emerging import SquareAutoregressiveConv2d, _solve, use_backend
from normflows_emerging.solve import solve_autoregressive
from solve_cases import random_causal_kernel

SUPPORTED = _solve.supported_instruction_sets()


def instruction_set_params():
    return [
        pytest.param(
            name,
            marks=pytest.mark.skipif(
                name not in SUPPORTED, reason=f"this CPU has no {name} (it runs {SUPPORTED})"
            ),
        )
        for name in _solve.INSTRUCTION_SETS
    ]


@pytest.fixture
def forced(request):
    """Run the test with the kernels of instruction set ``request.param``, then restore."""
    previous = _solve.set_instruction_set(request.param)
    yield request.param
    _solve.set_instruction_set(previous)


def odd_case(channels):
    """(size, dilation, flip, height, width) for ``channels``: every kernel size, dilation and
    flip, 1xN and Nx1 images, fewer pixels as C grows (the naive solve is element by element)."""
    size, dilation, flip = 1 + channels % 3, 1 + channels // 3 % 3, channels % 2 == 1
    long_side = 5 if channels <= 16 else 3
    shapes = [(1, long_side), (long_side, 1), (2, long_side - 1), (long_side - 1, 2)]
    return (size, dilation, flip, *shapes[channels // 2 % 4])


# Sampling results of C = 1..48 channels, solved by the naive solve in float64 once for all
# instruction sets: {C: (layer in float64, z, x)}. 17 images: slices of 1..7 images use the image
# kernel, 8 and more the batch kernel (full and partial blocks of 8).
NAIVE = {}


def naive_case(channels):
    if channels not in NAIVE:
        size, dilation, flip, height, width = odd_case(channels)
        generator = torch.Generator().manual_seed(channels)
        layer = SquareAutoregressiveConv2d(channels, size=size, flip=flip, dilation=dilation)
        layer = perturb_(layer.double().eval(), std=0.05, generator=generator)
        z = torch.randn(17, channels, height, width, dtype=torch.float64, generator=generator)
        with torch.no_grad():
            with use_backend("naive"):
                NAIVE[channels] = layer, z, layer(z)[0]
    return NAIVE[channels]


@pytest.mark.parametrize("forced", instruction_set_params(), indirect=True)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_each_instruction_set_matches_the_naive_solve(forced, dtype, tol):
    """C = 1..48 (whole, partial and several vectors and output groups of every kernel), m = 1..3,
    dilation 1..3, 1xN and Nx1 images, both flips, batches 1..17 through the layer."""
    assert _solve.instruction_set() == forced
    for channels in range(1, 49):
        layer64, z, expected = naive_case(channels)
        layer = copy.deepcopy(layer64).to(dtype)
        for batch in (1 + channels % 7, 8 + channels % 10):
            with torch.no_grad(), use_backend("compiled"):
                x = layer(z[:batch].to(dtype))[0]
            scale = expected[:batch].abs().max().item()
            where = f"{forced}, C={channels}, batch {batch}, {odd_case(channels)}"
            torch.testing.assert_close(
                x.double(),
                expected[:batch],
                atol=tol * scale,
                rtol=0,
                msg=lambda m, where=where: f"{where}: {m}",
            )


def relative_error(x, reference):
    return ((x.double() - reference).abs().max() / reference.abs().max()).item()


# {batch: (y, kernel, float64 reference, relative error of torch's float32 solve)}
LARGE_C = {}


def large_c_case(batch):
    """C = 256 at 8x8 for batch 2 (image kernel) and 8 (batch kernel)."""
    if batch not in LARGE_C:
        generator = torch.Generator().manual_seed(256)
        kernel = random_causal_kernel(256, 2, torch.float64, generator=generator)
        y = torch.randn(batch, 256, 8, 8, dtype=torch.float64, generator=generator)
        reference = solve_autoregressive(y, kernel, 1, "torch")
        wavefront = solve_autoregressive(y.float(), kernel.float(), 1, "torch")
        LARGE_C[batch] = y, kernel, reference, relative_error(wavefront, reference)
    return LARGE_C[batch]


@pytest.mark.parametrize("forced", instruction_set_params(), indirect=True)
@pytest.mark.parametrize("batch", [2, 8])
def test_float32_error_at_large_C_is_at_most_the_torch_solves(forced, batch):
    """C = 256: one chain of ~1000 float32 multiply-adds per output lost 2-3x torch's accuracy;
    blocked partial sums must bring the compiled solve (both kernels) down to torch's or below."""
    y, kernel, reference, wavefront = large_c_case(batch)
    x = solve_autoregressive(y.float(), kernel.float(), 1, "compiled")
    compiled = relative_error(x, reference)
    assert compiled <= wavefront, (forced, compiled, wavefront)


def test_set_instruction_set_rejects_unknown_and_restores_the_widest():
    with pytest.raises(ValueError, match="one of"):
        _solve.set_instruction_set("sse9")
    widest = _solve.instruction_set()
    assert widest == SUPPORTED[-1]
    assert _solve.set_instruction_set("baseline") == widest
    assert _solve.instruction_set() == "baseline"
    assert _solve.set_instruction_set(None) == "baseline"
    assert _solve.instruction_set() == widest


@pytest.mark.skipif(SUPPORTED == _solve.INSTRUCTION_SETS, reason="this CPU runs every set")
def test_unsupported_instruction_set_is_refused():
    missing = next(name for name in _solve.INSTRUCTION_SETS if name not in SUPPORTED)
    with pytest.raises(ValueError, match="does not support"):
        _solve.set_instruction_set(missing)


def import_extension_alone(isa):
    """Import the built extension in a fresh interpreter with NORMFLOWS_EMERGING_ISA=isa, alone
    (without the package and torch, to keep this fast); returns the finished process."""
    env = dict(os.environ, NORMFLOWS_EMERGING_ISA=isa)
    code = (
        "import importlib.util as u, sys; s = u.spec_from_file_location('_solve', sys.argv[1]); "
        "m = u.module_from_spec(s); s.loader.exec_module(m); print(m.instruction_set())"
    )
    command = [sys.executable, "-c", code, _solve.__file__]
    return subprocess.run(command, env=env, capture_output=True, text=True)


def test_environment_variable_picks_the_instruction_set_at_import():
    done = import_extension_alone("baseline")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "baseline"


def test_bad_environment_variable_is_an_import_error_naming_it():
    """An ImportError, so that the package warns and falls back instead of failing to import."""
    done = import_extension_alone("sse9")
    assert done.returncode != 0
    assert "ImportError: environment variable NORMFLOWS_EMERGING_ISA" in done.stderr


def test_environment_variable_as_typed_any_case_and_spaces():
    done = import_extension_alone(" BaseLine ")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "baseline"


def test_bad_environment_variable_warning_names_only_the_variable():
    """The extension is built and fine: the fallback warning must not send the user to rebuild
    it or look for a shadowed copy."""
    code = (
        "import warnings, normflows_emerging as p\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    print(p.inverse_backend())\n"
        "print(' '.join(str(w.message) for w in caught))\n"
    )
    env = dict(os.environ, NORMFLOWS_EMERGING_ISA="sse9")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    backend, message = done.stdout.splitlines()
    assert backend == "torch"
    assert "NORMFLOWS_EMERGING_ISA" in message and "sse9" in message
    assert "shadowed" not in message and "C compiler" not in message
