"""A call's result depends only on its parameters, input and arguments, whoever else uses the
model or the process at the same time (issue 27).

Deterministic interleavings use a solve backend registered for the test (``gated``: the torch
wavefront behind a hook that runs per-thread actions such as waiting for an event), so a thread
can be held inside a layer call while another one runs. Stress runs use 8 threads x 100 calls.
The GPU code path is taken on CPU tensors with ``accelerator_path`` (there the layers switch the
process-wide TF32 flags and the caches compare no values).
"""

import contextlib
import copy
import threading
import time

import pytest
import torch

from brute_force import perturb_
from dispatch_count import accelerator_path
from normflows_emerging import (
    EmergingConv2d,
    MaskedAffineAutoregressiveConv2d,
    PeriodicConv2d,
    QR1x1,
    SquareAutoregressiveConv2d,
    build_multiscale_flow,
    register_backend,
    use_backend,
)
from normflows_emerging import solve as solve_module
from normflows_emerging.flows import ActNorm
from normflows_emerging.flows.precision import _restore, _settings
from normflows_emerging.solve.wavefront import solve_wavefront

THREADS, CALLS = 8, 100
WAIT = 10  # seconds an event may take before the test fails instead of hanging


class Gate:
    """The ``gated`` backend's hook: per-thread actions run inside the solve, and the TF32
    flags every solve saw."""

    def __init__(self):
        self.actions = {}  # thread ident -> callable run inside that thread's next solves
        self.flags_seen = []

    def solve(self, y, kernel, dilation):
        self.flags_seen.append(tf32_flags())
        action = self.actions.get(threading.get_ident())
        if action is not None:
            action()
        return solve_wavefront(y, kernel, dilation)


@pytest.fixture
def gate(monkeypatch):
    """Registers the ``gated`` backend for this test only."""
    gate = Gate()
    monkeypatch.setattr(solve_module, "_BACKENDS", dict(solve_module._BACKENDS))
    register_backend("gated", gate.solve)
    return gate


def tf32_flags():
    """(cudnn.allow_tf32, matmul.allow_tf32) as torch reads them, or the error it raises when the
    two precision APIs disagree (torch's mixed state)."""
    try:
        return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    except RuntimeError as error:
        return f"mixed: {error}"


@pytest.fixture
def user_allows_tf32():
    saved = _settings()
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    yield
    _restore(saved)


def run_threads(*targets):
    """Run each target in its own thread; re-raise the first error."""
    errors = []

    def wrap(target):
        def run():
            try:
                target()
            except BaseException as error:  # noqa: BLE001 (handed to the main thread)
                errors.append(error)

        return run

    threads = [threading.Thread(target=wrap(target)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a thread hung"
    if errors:
        raise errors[0]


def wait(event):
    assert event.wait(WAIT), "timed out waiting for the other thread"


# --- TF32: a process-wide switch --------------------------------------------------------------


def test_tf32_stays_off_when_calls_overlap_and_the_users_flags_come_back(gate, user_allows_tf32):
    """A enters, B enters, A leaves, B leaves: B's solve after A left still runs without TF32,
    and afterwards the flags are the user's (True, True), readable (not torch's mixed state)."""
    layer = perturb_(SquareAutoregressiveConv2d(3, 2, solver="gated").double()).eval()
    z = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    a_inside, b_inside, a_left = threading.Event(), threading.Event(), threading.Event()
    seen_by_b_after_a_left = []

    def thread_a():
        gate.actions[threading.get_ident()] = lambda: (a_inside.set(), wait(b_inside))
        layer(z)
        a_left.set()

    def thread_b():
        wait(a_inside)

        def inside():
            b_inside.set()
            wait(a_left)
            seen_by_b_after_a_left.append(tf32_flags())

        gate.actions[threading.get_ident()] = inside
        layer(z)

    with accelerator_path(), torch.no_grad():
        run_threads(thread_a, thread_b)
    assert seen_by_b_after_a_left == [(False, False)]
    assert tf32_flags() == (True, True)


@pytest.mark.parametrize("calls", [CALLS])
def test_tf32_under_eight_threads_of_layer_calls(gate, user_allows_tf32, calls):
    layers = [
        perturb_(EmergingConv2d(3, 3, solver="gated").double()).eval(),
        perturb_(SquareAutoregressiveConv2d(3, 2, flip=True, solver="gated").double()).train(),
    ]
    z = torch.randn(1, 3, 4, 4, dtype=torch.float64)

    def work():
        for i in range(calls):
            layer = layers[i % 2]
            x, _ = layer(z)
            layer.inverse(x)

    with accelerator_path(), torch.no_grad():
        run_threads(*[work] * THREADS)
    assert len(gate.flags_seen) >= THREADS * calls
    assert set(gate.flags_seen) == {(False, False)}
    assert tf32_flags() == (True, True)


def test_tf32_flags_changed_by_the_user_during_a_call_are_kept(gate, user_allows_tf32):
    """A user who turns TF32 off while a layer call runs keeps that setting afterwards."""
    layer = perturb_(SquareAutoregressiveConv2d(3, 2, solver="gated").double())

    def change_flags():
        torch.backends.cuda.matmul.allow_tf32 = True  # the call had turned it off
        torch.backends.cudnn.allow_tf32 = False

    gate.actions[threading.get_ident()] = change_flags
    with accelerator_path(), torch.no_grad():
        layer(torch.randn(1, 3, 4, 4, dtype=torch.float64))
    assert tf32_flags() == (False, True)


# --- Temperature travels down the call ---------------------------------------------------------


def small_model(num_classes=None, mixing="emerging"):
    torch.manual_seed(0)
    model = build_multiscale_flow(
        (1, 8, 8), 2, 1, 8, mixing=mixing, num_classes=num_classes
    ).double()
    labels = None if num_classes is None else torch.arange(8) % num_classes
    model.log_prob(torch.rand(8, 1, 8, 8, dtype=torch.float64), labels)
    return perturb_(model, std=0.01).eval()


def tempered_log_prob(model, x, y, temperature):
    """log q_T(x) through normflows' own mechanism, on a copy of the model."""
    reference = copy.deepcopy(model)
    if temperature is not None:
        reference.set_temperature(temperature)
    with torch.no_grad():
        return reference.log_prob(x, y)


def test_a_temperature_is_not_seen_by_another_threads_call(gate):
    """A samples at T = 0.05 and is held inside a layer; B samples at the default meanwhile."""
    model = small_model()
    a_inside, b_done = threading.Event(), threading.Event()
    results = {}

    def thread_a():
        gate.actions[threading.get_ident()] = lambda: (a_inside.set(), wait(b_done))
        with use_backend("gated"), torch.no_grad():
            results["a"] = model.sample(4, temperature=0.05)

    def thread_b():
        wait(a_inside)
        with torch.no_grad():
            results["b"] = model.sample(4)
        b_done.set()

    run_threads(thread_a, thread_b)
    x, log_q = results["b"]
    torch.testing.assert_close(log_q, tempered_log_prob(model, x, None, None))
    x, log_q = results["a"]
    torch.testing.assert_close(log_q, tempered_log_prob(model, x, None, 0.05))
    assert all(q0.temperature is None for q0 in model.q0)


def test_eight_threads_sampling_at_their_own_temperatures_and_labels():
    model = small_model(num_classes=3)
    temperatures = [None, 0.05, 0.3, 0.7, 1.0, 1.3, 0.5, None]
    results = [[] for _ in temperatures]

    def work(index):
        def run():
            generator = torch.Generator().manual_seed(index)
            for _ in range(CALLS // 4):
                labels = torch.randint(3, (2,), generator=generator)
                with torch.no_grad():
                    x, log_q = model.sample(2, labels, temperature=temperatures[index])
                    log_p = model.log_prob(x, labels)
                results[index].append((x, log_q, labels, log_p))

        return run

    run_threads(*[work(i) for i in range(len(temperatures))])
    for temperature, samples in zip(temperatures, results):
        x, log_q, labels, log_p = (torch.cat(parts) for parts in zip(*samples))
        torch.testing.assert_close(log_q, tempered_log_prob(model, x, labels, temperature))
        torch.testing.assert_close(log_p, tempered_log_prob(model, x, labels, None))


# --- Caches under concurrent calls --------------------------------------------------------------


LAYERS = {
    "emerging": lambda: EmergingConv2d(4, 3),
    "autoregressive": lambda: SquareAutoregressiveConv2d(4, 2, flip=True),
    "qr": lambda: QR1x1(4),
    "periodic": lambda: PeriodicConv2d(4, 3),
    "maf": lambda: MaskedAffineAutoregressiveConv2d(4, 8),
}


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("path", ["cpu", "accelerator"])
def test_eight_threads_of_calls_on_one_layer_give_one_callers_results(name, path):
    torch.manual_seed(0)
    layer = perturb_(LAYERS[name]().double(), std=0.05).eval()
    inputs = [torch.randn(2, 4, 5, 6, dtype=torch.float64) for _ in range(THREADS)]
    reference = copy.deepcopy(layer).train()  # computes everything afresh
    with torch.no_grad():
        expected = [(reference(z), reference.inverse(z)) for z in inputs]
    outcomes = [None] * THREADS

    def work(index):
        def run():
            with torch.no_grad():
                for _ in range(CALLS):
                    outcome = layer(inputs[index]), layer.inverse(inputs[index])
            outcomes[index] = outcome

        return run

    with accelerator_path() if path == "accelerator" else contextlib.nullcontext():
        run_threads(*[work(i) for i in range(THREADS)])
    for outcome, reference_outcome in zip(outcomes, expected):
        torch.testing.assert_close(outcome, reference_outcome)


def test_a_cache_fill_that_straddles_a_fused_optimizer_step_is_not_kept(monkeypatch):
    """A computes the kernel from the old values; before A stores it, B takes a fused optimizer
    step (no version bump). Later calls must see the new values."""
    layer = perturb_(SquareAutoregressiveConv2d(3, 2).double()).eval()
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1, fused=True)
    z = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    computed, stepped = threading.Event(), threading.Event()
    assemble = SquareAutoregressiveConv2d._assemble
    holder = []

    def held_assemble(self, log_d):
        kernel = assemble(self, log_d)
        if threading.get_ident() in holder:
            computed.set()
            wait(stepped)
        return kernel

    monkeypatch.setattr(SquareAutoregressiveConv2d, "_assemble", held_assemble)

    def thread_a():
        holder.append(threading.get_ident())
        with torch.no_grad():
            layer(z)

    def thread_b():
        wait(computed)
        for p in layer.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()
        stepped.set()

    with accelerator_path():
        run_threads(thread_a, thread_b)
        with torch.no_grad():
            after = layer(z)
    torch.testing.assert_close(after, fresh(layer, z))


def fresh(layer, z):
    with torch.no_grad():
        return copy.deepcopy(layer).train()(z)


# --- ActNorm's data-dependent initialisation ----------------------------------------------------


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("held", ["before", "after"])
def test_two_first_calls_initialise_an_actnorm_once(direction, held, monkeypatch):
    """B's first call comes while A's first call is initialising (held before or after it sets
    the values): B must neither initialise again nor run with values A has not finished."""
    layer = ActNorm((3, 1, 1)).double()
    initialise = ActNorm._initialise
    calls = []
    a_initialising, b_started = threading.Event(), threading.Event()

    def hold():
        a_initialising.set()
        wait(b_started)
        time.sleep(0.2)  # B's call goes on meanwhile, as far as it can

    def held_initialise(self, *args):
        calls.append(threading.get_ident())
        if len(calls) == 1 and held == "before":
            hold()
        initialise(self, *args)
        if len(calls) == 1 and held == "after":
            hold()

    monkeypatch.setattr(ActNorm, "_initialise", held_initialise)
    batches = [torch.randn(16, 3, 4, 4, dtype=torch.float64) * s for s in (1.0, 5.0)]
    outputs = {}

    def thread_a():
        outputs["a"] = getattr(layer, direction)(batches[0])

    def thread_b():
        wait(a_initialising)
        b_started.set()
        outputs["b"] = getattr(layer, direction)(batches[1])

    run_threads(thread_a, thread_b)
    assert len(calls) == 1
    reference = ActNorm((3, 1, 1)).double()
    getattr(reference, direction)(batches[0])
    torch.testing.assert_close(layer.state_dict(), reference.state_dict())
    torch.testing.assert_close(outputs["b"], getattr(reference, direction)(batches[1]))
