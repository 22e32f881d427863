"""Every ``tl.debug_barrier()`` of the triton kernels is needed, and the race check
(``barrier_check``) sees it go: a copy of the kernels module without one barrier, compiled for
sm_90, has a race in its TTGIR; so has a copy whose loads of ``r`` come before the barrier after
its store (a load hoisted above a barrier). The kernels as they are have none (test_triton_compile
checks every capability and block size)."""

import ast

import pytest

pytest.importorskip("triton")

from barrier_check import races  # noqa: E402
from triton_offline import (  # noqa: E402
    compile_kernel,
    edited_kernels,
    kernels_source,
    launch_configuration,
)

SOURCE = kernels_source()


def barrier_lines(source):
    """Line numbers of the ``tl.debug_barrier()`` statements (not the docstrings' mentions)."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and ast.unparse(node.value.func) == "tl.debug_barrier"
    ]


def compiled_races(source, kernel="solve_kernel"):
    """The races of ``kernel`` of a copy of the kernels module made from ``source``."""
    module = edited_kernels(source, interpret=False)
    sizes, constexprs, options = launch_configuration(kernel, 12, 8, 8, 2, "float32", 90)
    compiled, _ = compile_kernel(kernel, "float32", sizes, constexprs, options, 90, module)
    return races(compiled.asm["ttgir"], kernel, source, module.__file__)


def replace_line(source, number, text):
    lines = source.splitlines(keepends=True)
    indent = lines[number - 1][: len(lines[number - 1]) - len(lines[number - 1].lstrip())]
    lines[number - 1] = indent + text + "\n"
    return "".join(lines)


def test_three_barriers():
    """After r is stored, after r is read, after each diagonal (the kernels' docstring)."""
    assert len(barrier_lines(SOURCE)) == 3


@pytest.mark.parametrize("number", barrier_lines(SOURCE), ids=lambda n: f"line{n}")
def test_each_barrier_is_needed(number):
    found = compiled_races(replace_line(SOURCE, number, "pass"))
    assert found, f"no race found without the barrier at line {number}"
    # on the solution buffer (and, without the first, on the corner's inverse it publishes)
    assert {race.first[1] for race in found} <= {"x", "workspace"}
    assert any(race.first[1] == "x" for race in found)


def test_a_load_hoisted_above_a_barrier_is_a_race():
    """r's chunks loaded before the barrier that follows r's store: the barrier moved down."""
    after_store, after_reads, _ = barrier_lines(SOURCE)
    hoisted = replace_line(SOURCE, after_store, "pass")
    hoisted = replace_line(hoisted, after_reads, "tl.debug_barrier(); tl.debug_barrier()")
    found = compiled_races(hoisted)
    assert any(race.first[0] == "store" and race.second[0] == "load" for race in found), found
