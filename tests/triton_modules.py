"""Copies of the Triton kernels module for the tests: interpreted on CPU tensors, or compiled
ahead of time for a GPU this machine does not have.

Triton decides between the two when the kernels are defined (``TRITON_INTERPRET``), so each copy
is a fresh import of the module's file under its own name with the variable set for that import:
the tests do not depend on the environment they were started in, nor on which test ran first.
"""

import functools
import importlib.util
import os
import re
import subprocess

import triton
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


def compile_report(kernel_name, signature, constexprs, num_warps, capability):
    """Compile one kernel of the module for ``sm_<capability>`` without a GPU and return
    ``{"registers", "stack_frame", "spill_stores", "spill_loads"}`` (bytes) as ptxas reports them (``ptxas -v`` on the
    PTX Triton generated, with Triton's own ptxas and target name)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    fn = getattr(load_kernels(False), kernel_name)
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    compiled = triton.compile(
        source, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps}
    )
    ptx = compiled.asm["ptx"]
    directory = os.environ.get("TMPDIR", "/tmp")
    path = os.path.join(directory, f"nfe_{kernel_name}_{os.getpid()}_{capability}.ptx")
    with open(path, "w") as file:
        file.write(ptx)
    try:
        result = subprocess.run(
            [
                get_ptxas(capability).path,
                "-v",
                f"--gpu-name={sm_arch_from_capability(capability)}",
                path,
                "-o",
                path + ".o",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        for leftover in (path, path + ".o"):
            if os.path.exists(leftover):
                os.remove(leftover)
    log = result.stderr + result.stdout
    frame, stores, loads = (int(group) for group in _FRAME.search(log).groups())
    registers = int(_REGISTERS.search(log).group(1))
    return {
        "registers": registers,
        "stack_frame": frame,
        "spill_stores": stores,
        "spill_loads": loads,
    }
