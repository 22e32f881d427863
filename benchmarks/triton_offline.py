"""The Triton kernels without a GPU: interpreted copies (CPU tensors) and ahead-of-time compile
reports (registers, spills) for GPUs this machine does not have. Used by the tests and by
``dispatch_count.py``; run as a script it writes ``results/triton_registers.json``.

Triton decides between the two when the kernels are defined (``TRITON_INTERPRET``), so each copy
is a fresh import of the module's file under its own name with the variable set for that import:
the tests do not depend on the environment they were started in, nor on which test ran first.
"""

import contextlib
import functools
import importlib.util
import io
import os
import re

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

KERNELS = "normflows_emerging.backends.triton_kernels"


@functools.cache
def load_kernels(interpret: bool):
    """A fresh copy of the kernels module, run by Triton's interpreter if ``interpret``."""
    path = importlib.util.find_spec(KERNELS).origin
    name = f"{KERNELS}_{'interpreted' if interpret else 'compiled'}"
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


_REGISTERS = re.compile(r"Used (\d+) registers")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_report(kernel_name, signature, constexprs, options, capability):
    """Compile one kernel of the module for ``sm_<capability>`` without a GPU and return
    ``{"registers", "stack_frame", "spill_stores", "spill_loads"}`` (the last three in bytes)
    from the log of the ptxas run that made the binary (``ptxas -v``, which Triton runs with
    its own options and prints when asked; compiled afresh, not from Triton's cache)."""
    fn = getattr(load_kernels(False), kernel_name)
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    log = io.StringIO()
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.compilation.always_compile = True
        knobs.nvidia.dump_ptxas_log = True
        triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
    log = log.getvalue()
    frame, stores, loads = (int(group) for group in _FRAME.search(log).groups())
    registers = int(_REGISTERS.search(log).group(1))
    return {
        "registers": registers,
        "stack_frame": frame,
        "spill_stores": stores,
        "spill_loads": loads,
    }


_POINTERS = {
    "solve_kernel": ("y", "x", "kernel", "workspace"),
    "emerging_step_kernel": (
        "z", "out", "scratch", "workspace", "anticausal_kernel", "anticausal_bias",
        "causal_kernel", "causal_bias", "weight_inverse",
    ),
}  # fmt: skip
_TYPES = {"float32": "fp32", "float64": "fp64"}


def kernel_report(kernel_name, channels, height, width, size, dtype, capability):
    """:func:`compile_report` of a kernel with the block sizes the backend picks for a
    (B, channels, height, width) input, ``size`` x ``size`` kernels and ``dtype``."""
    import torch

    from normflows_emerging.backends.triton_solve import _blocks

    blocks = _blocks(channels, height, width, getattr(torch, dtype))
    options = {name: blocks.pop(name) for name in ("num_warps", "maxnreg")}
    constexprs = dict(SIZE=size, **blocks)
    if kernel_name == "solve_kernel":
        del constexprs["BLOCK_Q"]
    else:
        constexprs["HAS_MIX"] = True
    signature = {name: "*" + _TYPES[dtype] for name in _POINTERS[kernel_name]}
    signature.update(C="i32", H="i32", W="i32", dilation="i32")
    signature.update({name: "constexpr" for name in constexprs})
    report = compile_report(kernel_name, signature, constexprs, options, capability)
    return dict(report, **options, **blocks)


# The largest register needs at C <= 48: the most channels, the largest diagonals, 3x3 windows
# (kernel size 5), float64; the paper's CIFAR-10 shapes.
REPORT_CASES = [
    ("solve_kernel", 48, 32, 32, 3, "float32"),
    ("solve_kernel", 48, 32, 32, 3, "float64"),
    ("emerging_step_kernel", 48, 32, 32, 3, "float32"),
    ("emerging_step_kernel", 48, 32, 32, 3, "float64"),
    ("emerging_step_kernel", 12, 16, 16, 2, "float32"),
    ("emerging_step_kernel", 24, 8, 8, 2, "float32"),
    ("emerging_step_kernel", 48, 4, 4, 2, "float32"),
]


def main():
    import pathlib

    from timing import write_json

    rows = []
    for case in REPORT_CASES:
        for capability in (90, 80):
            report = kernel_report(*case, capability)
            kernel, channels, height, width, size, dtype = case
            row = dict(kernel=kernel, C=channels, H=height, W=width, m=size, dtype=dtype)
            rows.append(dict(row, target=f"sm_{capability}", **report))
            print(rows[-1], flush=True)
    path = pathlib.Path(__file__).parent / "results" / "triton_registers.json"
    write_json(
        str(path),
        rows,
        what="ptxas -v of the triton backend's kernels compiled ahead of time (no GPU)",
        triton=triton.__version__,
    )


if __name__ == "__main__":
    main()
