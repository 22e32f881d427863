"""Races between the threads of one program of the triton kernels, found in their compiled TTGIR.

A program solves one image; its threads share the image's buffers, and a value one thread
stores is visible to another only after a barrier (``tl.debug_barrier()``, ``__syncthreads``).
Triton's interpreter runs a program's operations one after another, so it cannot show a missing
barrier; the compiled code can. :func:`races` reads the TTGIR of a compiled kernel (the loads,
stores and barriers in the order the compiler left them, inside their loops) and reports every
pair of accesses to one buffer, at least one a store, that may touch the same element from
different threads with no barrier between them.

It unrolls every loop twice (iterations 0 and 1), which puts each access after each other one
in both orders: a store before a later iteration's load, a load before the same iteration's
store. Which elements an access touches comes from the kernel's source, by the index names of
its pointer (the operation's location in the TTGIR gives its source line):

* ``n_pix`` (a tap's neighbours) in ``_solve_image``: pixels of earlier anti-diagonals, so it
  meets the current pixels of an earlier iteration of the diagonal loop ``t`` only;
* ``outputs`` or ``pix`` in ``_solve_image``: the pixels of this block of this diagonal,
  disjoint across iterations of the loops ``t`` and ``start``;
* ``cols`` in ``_invert_corner``: this block of columns, disjoint across iterations of ``j0``;
* ``pix`` in ``_mix_image``: this block of pixels, disjoint across iterations of its ``start``;
* anything else: the whole buffer.

These are properties of the index arithmetic, which the interpreter tests check; this check is
about the synchronisation the compiled code keeps.
"""

from __future__ import annotations

import ast
import dataclasses
import re

# function -> (names in the pointer expression, loops whose iterations touch disjoint elements)
_PARTITIONS = {
    "_solve_image": ({"outputs", "pix"}, ("t", "start")),
    "_invert_corner": ({"cols"}, ("j0",)),
    "_mix_image": ({"pix"}, ("start",)),
}
_EARLIER = ("_solve_image", "n_pix", "t")  # function, name, the loop it is earlier in
_POINTER_OPS = (
    "tt.addptr", "tt.splat", "tt.broadcast", "tt.expand_dims", "ttg.convert_layout",
    "tt.reshape", "tt.trans", "arith.select",
)  # fmt: skip
_BARRIERS = ("ttg.barrier", "gpu.barrier")


@dataclasses.dataclass
class _Loop:
    uid: int
    line: int | None = None
    body: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Access:
    store: bool
    buffers: frozenset
    line: int | None


@dataclasses.dataclass(frozen=True)
class Race:
    """Two accesses with no barrier between them: ``first`` runs before ``second``; each is
    ``(kind, buffer, source line)``."""

    first: tuple
    second: tuple

    def __str__(self):
        (kind1, buffer, line1), (kind2, _, line2) = self.first, self.second
        return f"{kind1} of {buffer} (line {line1}) -> {kind2} (line {line2}), no barrier"


def _locations(ttgir: str, source_path: str) -> dict:
    """``#locN`` -> the source line it resolves to (the callee's line for an inlined call)."""
    raw = dict(re.findall(r"^(#loc\d*) = loc\((.*)\)\s*$", ttgir, re.MULTILINE))
    resolved = {}

    def resolve(text, depth=0):
        if depth > 50:
            return None
        text = text.strip()
        match = re.match(r'"([^"]*)":(\d+):\d+$', text)
        if match:
            return int(match.group(2)) if match.group(1) == source_path else None
        match = re.match(r"callsite\((#loc\d*) at ", text)  # the callee's location
        if match:
            return lookup(match.group(1), depth)
        for reference in re.findall(r"#loc\d*", text):  # a name, fused, or another location
            line = lookup(reference, depth)
            if line is not None:
                return line
        return None

    def lookup(name, depth):
        if name not in resolved:
            resolved[name] = resolve(raw.get(name, "unknown"), depth + 1)
        return resolved[name]

    return {name: lookup(name, 0) for name in raw}


def _line_of(text: str, locations: dict) -> int | None:
    match = re.search(r"loc\((#loc\d*)\)\s*$", text)
    return locations.get(match.group(1)) if match else None


def _parameters(source: str, function: str) -> list:
    """The run-time parameters of kernel ``function`` in ``source``, in order (the constexpr
    ones are compiled in)."""
    tree = ast.parse(source)
    definition = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    return [
        a.arg
        for a in definition.args.args
        if a.annotation is None or "constexpr" not in ast.unparse(a.annotation)
    ]


def _parse(ttgir: str, function: str, locations: dict, parameters: list) -> tuple[list, list]:
    """The body of ``tt.func @function`` as nested ``_Loop``/``_Access``/``"barrier"`` items,
    and ``(buffers, integer type)`` of every pointer offset that is not a constant. Buffers are
    named by ``parameters`` (triton before 3.5 names the arguments %arg0, %arg1, ...)."""
    lines = ttgir.splitlines()
    constants = set(re.findall(r"(%[\w.]+) = arith\.constant", ttgir))
    offsets = []
    start = next(i for i, line in enumerate(lines) if f"tt.func public @{function}(" in line)
    arguments = re.findall(r"%(\w+): ([^ ,)]+)", lines[start])
    buffers = {
        f"%{name}": frozenset([parameter])
        for (name, kind), parameter in zip(arguments, parameters)
        if kind.startswith("!tt.ptr")
    }
    root = _Loop(uid=-1)
    stack = [root]
    outer = []  # the enclosing regions' values: numbered names are reused in sibling regions
    for number, line in enumerate(lines[start + 1 :], start + 1):
        text = line.strip()
        if text.startswith("}"):
            node = stack.pop()
            if text.startswith("} else"):
                raise NotImplementedError(f"scf.if with an else region at TTGIR line {number}")
            if not stack:
                break
            node.line = _line_of(text, locations)
            buffers = outer.pop()
            continue
        definition = re.match(r"(%[\w.]+) = ([\w.]+)(.*)$", text)
        operation = definition.group(2) if definition else text.split(" ", 1)[0].strip('"')
        if definition and operation in _POINTER_OPS:
            operands = re.findall(r"%[\w.]+", definition.group(3).split(" : ", 1)[0])
            found = frozenset().union(*(buffers.get(o, frozenset()) for o in operands))
            if found:
                buffers[definition.group(1)] = found
            if operation == "tt.addptr" and operands[1] not in constants:
                # the offset's type comes last: "tensor<8x16xi64, #blocked>" or "i64"
                types = definition.group(3).split(" : ", 1)[1]
                offsets.append((found, re.findall(r"i(?:32|64)\b", types)[-1]))
        if operation == "scf.for":
            for name, initial in re.findall(r"(%[\w.]+) = (%[\w.]+)", text.split("iter_args")[-1]):
                if initial in buffers:
                    buffers[name] = buffers[initial]
        if operation in ("tt.load", "tt.store"):
            arguments = text.split(operation, 1)[1]
            pointer = re.search(r"%[\w.]+", arguments).group(0)
            stack[-1].body.append(
                _Access(
                    operation == "tt.store",
                    buffers.get(pointer, frozenset()),
                    _line_of(text, locations),
                )
            )
        elif operation.startswith(("tt.atomic", "ttg.local_")):
            raise NotImplementedError(f"{operation} at TTGIR line {number}")
        elif operation in _BARRIERS:
            stack[-1].body.append("barrier")
        if text.endswith("{"):
            if operation == "scf.if" or operation == "scf.while":
                raise NotImplementedError(f"{operation} at TTGIR line {number}")
            node = _Loop(uid=number) if operation == "scf.for" else _Loop(uid=-number)
            stack[-1].body.append(node)
            stack.append(node)
            outer.append(buffers)
            buffers = dict(buffers)
    return root.body, offsets


def _source_facts(source: str):
    """From the kernels' source: per line of a ``tl.load``/``tl.store`` call the function it is
    in and the names in its pointer expression; per line of a ``for`` header the function and
    loop variable. Every line of a call or header counts (triton places an operation on the
    call's first line or, before 3.5, on its pointer's)."""
    tree = ast.parse(source)
    calls, loops = {}, {}
    for function in (node for node in tree.body if isinstance(node, ast.FunctionDef)):
        for node in ast.walk(function):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("tl.load", "tl.store"):
                names = {n.id for n in ast.walk(node.args[0]) if isinstance(n, ast.Name)}
                for line in range(node.lineno, node.end_lineno + 1):
                    calls[line] = (function.name, names)
            elif isinstance(node, ast.For) and isinstance(node.target, ast.Name):
                for line in range(node.lineno, node.body[0].lineno):
                    loops[line] = (function.name, node.target.id)
    return calls, loops


def _trace(body, loops, context=()):
    """Every access and barrier with each loop run twice; an access comes with its context: one
    ``(loop uid, function, loop variable, iteration)`` per enclosing loop, outermost first."""
    for item in body:
        if isinstance(item, _Loop):
            function, variable = loops.get(item.line, (None, None))
            runs = 2 if item.uid >= 0 else 1
            for iteration in range(runs):
                entry = (item.uid, function, variable, iteration)
                yield from _trace(item.body, loops, context + (entry,))
        else:
            yield item, context


def _instance_and_iteration(context, function, variable):
    """The path to the innermost enclosing loop ``function``/``variable``, and its iteration."""
    for depth in range(len(context) - 1, -1, -1):
        if context[depth][1:3] == (function, variable):
            return context[:depth] + (context[depth][:3],), context[depth][3]
    return None, None


def _disjoint(first, second, calls) -> bool:
    """Whether the two accesses (``(access, context)``) touch no common element."""
    (a, context_a), (b, context_b) = first, second
    function_a, names_a = calls.get(a.line, (None, set()))
    function_b, names_b = calls.get(b.line, (None, set()))
    function, name, loop = _EARLIER
    earlier = [
        name in names_a and function_a == function,
        name in names_b and function_b == function,
    ]
    if any(earlier):
        if all(earlier):
            return True  # two reads
        current, neighbours = (second, first) if earlier[0] else (first, second)
        names, _ = _PARTITIONS[function]
        current_function, current_names = calls.get(current[0].line, (None, set()))
        if current_function != function or not names & current_names:
            return False
        instance_c, iteration_c = _instance_and_iteration(current[1], function, loop)
        instance_n, iteration_n = _instance_and_iteration(neighbours[1], function, loop)
        # neighbours lie on diagonals before their own: a later iteration's pixels are not there
        return instance_c is not None and instance_c == instance_n and iteration_c >= iteration_n
    if function_a != function_b or function_a not in _PARTITIONS:
        return False
    names, partition = _PARTITIONS[function_a]
    if not (names & names_a and names & names_b):
        return False
    for variable in partition:
        instance_a, iteration_a = _instance_and_iteration(context_a, function_a, variable)
        instance_b, iteration_b = _instance_and_iteration(context_b, function_a, variable)
        if instance_a is not None and instance_a == instance_b and iteration_a != iteration_b:
            return True
    return False


def races(ttgir: str, function: str, source: str, source_path: str) -> list[Race]:
    """The races in the TTGIR of kernel ``function``, compiled from ``source`` (the kernels
    module's text) at ``source_path``; an empty list when every dependent pair of accesses is
    separated by a barrier."""
    locations = _locations(ttgir, source_path)
    calls, loops = _source_facts(source)
    body = _parse(ttgir, function, locations, _parameters(source, function))[0]
    events = list(_trace(body, loops))
    found = set()
    barriers_before = 0
    accesses = []  # (access, context, barriers seen before it)
    for item, context in events:
        if item == "barrier":
            barriers_before += 1
            continue
        for earlier, earlier_context, earlier_barriers in accesses:
            if earlier_barriers != barriers_before:
                continue  # a barrier lies between them
            if not (earlier.store or item.store):
                continue
            for buffer in earlier.buffers & item.buffers:
                if not _disjoint((earlier, earlier_context), (item, context), calls):
                    kinds = (
                        "store" if earlier.store else "load",
                        "store" if item.store else "load",
                    )
                    found.add(Race((kinds[0], buffer, earlier.line), (kinds[1], buffer, item.line)))
        accesses.append((item, context, barriers_before))
    return sorted(found, key=str)


def access_count(ttgir: str, function: str, source: str, source_path: str) -> int:
    """How many loads and stores of kernel ``function`` the checker sees (a test that the TTGIR
    was read at all)."""

    def count(body):
        return sum(count(i.body) if isinstance(i, _Loop) else isinstance(i, _Access) for i in body)

    locations = _locations(ttgir, source_path)
    return count(_parse(ttgir, function, locations, _parameters(source, function))[0])


def offset_types(ttgir: str, function: str, source: str) -> dict:
    """Per buffer (pointer argument) of kernel ``function``, the integer types of the offsets
    added to it that are not constants: ``{"x": {"i32"}, ...}``."""
    found = {}
    for buffers, integer in _parse(ttgir, function, {}, _parameters(source, function))[1]:
        for buffer in buffers:
            found.setdefault(buffer, set()).add(integer)
    return found
