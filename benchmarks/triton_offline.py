"""The Triton kernels without a GPU: interpreted copies (CPU tensors), copies with edited source
(kernels made wrong on purpose, for the tests), and ahead-of-time compiles for GPUs this machine
does not have, with ptxas's register and spill counts and Triton's own IR. Used by the tests and
by ``dispatch_count.py``; run as a script it writes ``results/triton_registers.json`` (the
register, spill and shared-memory counts of every channel block on sm_80, sm_86, sm_89 and
sm_90) or, with ``--self-check-cost``, ``results/triton_self_check_cost.json``:

    python benchmarks/triton_offline.py [--self-check-cost]

Triton decides between interpreting and compiling when the kernels are defined
(``TRITON_INTERPRET``), so each copy is a fresh import of the module's file under its own name
with the variable set for that import: the tests do not depend on the environment they were
started in, nor on which test ran first.
"""

import contextlib
import functools
import importlib.util
import io
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

KERNELS = "normflows_emerging.backends.triton_kernels"
# Compute capabilities the compile tests and the report cover (NVIDIA's limits per capability:
# normflows_emerging.backends.triton_device.LIMITS).
CAPABILITIES = (80, 86, 89, 90)


def kernels_source() -> str:
    """The source text of the kernels module."""
    return pathlib.Path(importlib.util.find_spec(KERNELS).origin).read_text()


def _load(path, name, interpret):
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return module


@functools.cache
def load_kernels(interpret: bool):
    """A fresh copy of the kernels module, run by Triton's interpreter if ``interpret``."""
    name = f"{KERNELS}_{'interpreted' if interpret else 'compiled'}"
    return _load(importlib.util.find_spec(KERNELS).origin, name, interpret)


_EDITED = tempfile.TemporaryDirectory(prefix="edited_kernels_")


def edited_kernels(source: str, interpret: bool = True):
    """A copy of the kernels module made from ``source`` (the module's text with an edit, see
    :func:`kernels_source`), interpreted or compiled. Triton reads a kernel's source from its
    file, so the text goes to a file that lives as long as the process."""
    folder = tempfile.mkdtemp(dir=_EDITED.name)
    path = os.path.join(folder, "triton_kernels.py")
    with open(path, "w") as f:
        f.write(source)
    return _load(path, f"{KERNELS}_edited_{os.path.basename(folder)}", interpret)


_REGISTERS = re.compile(r"Used (\d+) registers")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_POINTERS = {
    "solve_kernel": ("y", "x", "kernel", "workspace"),
    "emerging_step_kernel": (
        "z", "out", "scratch", "workspace", "anticausal_kernel", "anticausal_bias",
        "causal_kernel", "causal_bias", "weight_inverse",
    ),
}  # fmt: skip
_TYPES = {"float32": "fp32", "float64": "fp64"}


def compile_kernel(kernel_name, dtype, sizes, constexprs, options, capability, module=None):
    """Compile ``kernel_name`` of the kernels module (or of ``module``, a copy) for
    ``sm_<capability>`` without a GPU; returns ``(compiled, ptxas_log)``. Compiles once per
    process for each distinct input (C = 96 and C = 128 compile alike, say).

    Args:
      dtype: "float32" or "float64", the type of every tensor argument
      sizes: the int arguments ``C``, ``H``, ``W``, ``dilation`` as a dict; as at a launch, each
        divisible by 16 is compiled as such, and so is every pointer (torch aligns allocations)
      constexprs: the compile-time arguments (block sizes, ``SIZE``, flags)
      options: launch options (``num_warps``, ``maxnreg``)
    """
    aligned = tuple(name for name, n in sizes.items() if n % 16 == 0)
    return _compile(
        kernel_name, dtype, tuple(sizes), aligned, tuple(constexprs.items()),
        tuple(options.items()), capability, module or load_kernels(False),
    )  # fmt: skip


@functools.cache
def _compile(kernel_name, dtype, ints, aligned_ints, constexprs, options, capability, module):
    fn = getattr(module, kernel_name)
    constexprs = dict(constexprs)
    signature = {name: "*" + _TYPES[dtype] for name in _POINTERS[kernel_name]}
    signature.update({name: "i32" for name in ints})
    signature.update({name: "constexpr" for name in constexprs})
    aligned = _POINTERS[kernel_name] + aligned_ints
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    target = GPUTarget("cuda", capability, 32)
    options = dict(options, enable_fp_fusion=True)
    log = io.StringIO()
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.compilation.always_compile = True  # ptxas runs (and prints its log) every time
        logged = hasattr(knobs.nvidia, "dump_ptxas_log")
        if logged:
            knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(source, target=target, options=options)
    return compiled, log.getvalue() if logged else _ptxas_log(compiled.asm["ptx"])


def _ptxas_log(ptx: str) -> str:
    """``ptxas -v`` of ``ptx`` with the options triton 3.4 gives ptxas (whose log it drops)."""
    arch = re.search(r"^\.target\s+(\S+)", ptx, re.MULTILINE).group(1)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        command = [knobs.nvidia.ptxas.path, "-lineinfo", "-v", f"--gpu-name={arch}", path]
        done = subprocess.run(
            command + ["-o", path + ".o"], capture_output=True, text=True, check=True
        )
    return done.stdout + done.stderr


def _registers(log: str) -> dict:
    frame, stores, loads = (int(group) for group in _FRAME.search(log).groups())
    return {
        "registers": int(_REGISTERS.search(log).group(1)),
        "stack_frame": frame,
        "spill_stores": stores,
        "spill_loads": loads,
    }


def launch_configuration(kernel_name, channels, height, width, size, dtype, capability, wide=None):
    """What the backend launches for a (B, channels, height, width) input of ``dtype``,
    ``size`` x ``size`` kernels, on a device of ``capability`` (NVIDIA's limits), with 64-bit
    offsets where the sizes need them (or as ``wide`` says): ``(sizes, constexprs, options)``
    for :func:`compile_kernel`."""
    import torch

    from normflows_emerging.backends.triton_device import LIMITS, block_sizes
    from normflows_emerging.backends.triton_solve import needs_wide_indices

    if wide is None:
        wide = needs_wide_indices(channels, height, width, size, 1)
    limits = LIMITS[divmod(capability, 10)]
    blocks = block_sizes(channels, height, width, getattr(torch, dtype), limits, wide)
    options = {name: blocks.pop(name) for name in ("num_warps", "maxnreg")}
    constexprs = dict(SIZE=size, **blocks, WIDE=wide)
    if kernel_name == "solve_kernel":
        del constexprs["BLOCK_Q"]
    else:
        constexprs["HAS_MIX"] = True
    sizes = dict(C=channels, H=height, W=width, dilation=1)
    return sizes, constexprs, options


def compile_launch(kernel_name, channels, height, width, size, dtype, capability, wide=None):
    """:func:`compile_kernel` of what the backend launches (:func:`launch_configuration`),
    ``WIDE`` as the sizes need or as given; returns ``(compiled, ptxas_log, constexprs,
    options)``."""
    sizes, constexprs, options = launch_configuration(
        kernel_name, channels, height, width, size, dtype, capability, wide
    )
    compiled, log = compile_kernel(kernel_name, dtype, sizes, constexprs, options, capability)
    return compiled, log, constexprs, options


def kernel_report(kernel_name, channels, height, width, size, dtype, capability, wide=None):
    """ptxas's counts (``registers``, ``stack_frame``, ``spill_stores``, ``spill_loads``, bytes),
    Triton's ``shared`` memory (bytes), the launch options and block sizes of a kernel as the
    backend launches it (:func:`compile_launch`)."""
    compiled, log, constexprs, options = compile_launch(
        kernel_name, channels, height, width, size, dtype, capability, wide
    )
    report = dict(_registers(log), shared=compiled.metadata.shared, **options)
    blocks = {k: v for k, v in constexprs.items() if k.startswith(("BLOCK", "CHUNK", "WIDE"))}
    return dict(report, **blocks)


# The report: every channel block (C = 1 .. 128 in powers of two, and 65 and 96: either side of
# the step from 8 to 16 warps), both kernels, both dtypes, on 256 x 256 images (the largest pixel
# blocks) with 3 x 3 windows (kernel size 5); 64-bit indices at C = 128; the paper's CIFAR-10
# shapes (C = 12, 24, 48 at 16, 8, 4 pixels, kernel size 3).
REPORT_CASES = (
    [
        (kernel, channels, 256, 256, 3, dtype, None)
        for kernel in ("solve_kernel", "emerging_step_kernel")
        for dtype in ("float32", "float64")
        for channels in (1, 2, 4, 8, 16, 32, 64, 65, 96, 128)
    ]
    + [
        (kernel, 128, 256, 256, 3, dtype, True)
        for kernel in ("solve_kernel", "emerging_step_kernel")
        for dtype in ("float32", "float64")
    ]
    + [
        ("emerging_step_kernel", 12, 16, 16, 2, "float32", None),
        ("emerging_step_kernel", 24, 8, 8, 2, "float32", None),
        ("emerging_step_kernel", 48, 4, 4, 2, "float32", None),
    ]
)


def self_check_cost(capability=90, repeats=3):
    """Seconds per kernel variant and dtype of the triton backend's self-check that can be
    measured without a GPU: compiling the check's kernel for ``sm_<capability>`` afresh (what a
    GPU's first use pays once per machine; Triton caches the binary on disk), median of
    ``repeats``; and running the check in Triton's interpreter (what the test suite pays)."""
    import statistics
    import time

    import torch

    from normflows_emerging.backends import triton_solve

    variants = {
        "solve": ("solve_kernel", {}),
        "emerging step with W^-1": ("emerging_step_kernel", {"HAS_MIX": True}),
        "emerging step": ("emerging_step_kernel", {"HAS_MIX": False}),
    }
    blocks = dict(triton_solve._CHECK_BLOCKS)
    options = {name: blocks.pop(name) for name in ("num_warps", "maxnreg")}
    sizes = dict(C=5, H=4, W=6, dilation=1)  # check_problem's
    interpreted = load_kernels(True)
    cpu = torch.device("cpu")
    rows = []
    for dtype in ("float32", "float64"):
        for variant, (kernel, flags) in variants.items():
            constexprs = dict(SIZE=2, **blocks, WIDE=False, **flags)
            if kernel == "solve_kernel":
                del constexprs["BLOCK_Q"]
            compile_seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                _compile.__wrapped__(
                    kernel, dtype, tuple(sizes), (), tuple(constexprs.items()),
                    tuple(options.items()), capability, load_kernels(False),
                )  # fmt: skip
                compile_seconds.append(time.perf_counter() - start)
            torch_dtype = getattr(torch, dtype)
            start = time.perf_counter()
            if kernel == "solve_kernel":
                error = triton_solve._check_solve(interpreted, cpu, torch_dtype, False)
            else:
                mix = flags["HAS_MIX"]
                error = triton_solve._check_step(interpreted, cpu, torch_dtype, mix, False)
            rows.append(
                dict(
                    variant=variant,
                    dtype=dtype,
                    target=f"sm_{capability}",
                    compile_seconds=statistics.median(compile_seconds),
                    compile_seconds_range=[min(compile_seconds), max(compile_seconds)],
                    interpreter_seconds=time.perf_counter() - start,
                    interpreter_error=error,
                )
            )
            print(rows[-1], flush=True)
    return rows


def main(argv=None):
    import argparse

    from timing import print_table, write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--self-check-cost",
        action="store_true",
        help="write results/triton_self_check_cost.json instead of the register counts",
    )
    args = parser.parse_args(argv)
    if args.self_check_cost:
        name, rows = "triton_self_check_cost.json", self_check_cost()
        columns = ["variant", "dtype", "target", "compile_seconds", "interpreter_seconds"]
        what = (
            "the triton backend's self-check without a GPU: compiling its kernel ahead of time "
            "(median of 3, cold) and running it in Triton's interpreter on the CPU"
        )
    else:
        name, rows = "triton_registers.json", register_counts()
        columns = ["kernel", "C", "H", "dtype", "WIDE", "target", "num_warps", "maxnreg"]
        columns += ["registers", "spill_stores", "spill_loads", "shared"]
        what = (
            "ptxas -v of the triton backend's kernels compiled ahead of time (no GPU), with the "
            "block sizes the backend picks for NVIDIA's limits of each compute capability"
        )
    print_table(rows, columns)
    command = "python benchmarks/triton_offline.py" + (
        " --self-check-cost" if args.self_check_cost else ""
    )
    path = pathlib.Path(__file__).parent / "results" / name
    write_json(str(path), rows, what=what, triton=triton.__version__, command=command)


def register_counts():
    """:func:`kernel_report` of every case of ``REPORT_CASES`` on every capability."""
    rows = []
    for kernel, channels, height, width, size, dtype, wide in REPORT_CASES:
        for capability in CAPABILITIES:
            report = kernel_report(kernel, channels, height, width, size, dtype, capability, wide)
            row = dict(kernel=kernel, C=channels, H=height, W=width, m=size, dtype=dtype)
            rows.append(dict(row, target=f"sm_{capability}", **report))
            print(f"{len(rows)}/{len(REPORT_CASES) * len(CAPABILITIES)}", rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
