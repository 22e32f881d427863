"""Grouped weights (issue 26): a model's layers compute their parameter-side tensors in one
batched computation per kind and shape, with the values of the per-layer computation, per call
and per thread, fresh after every parameter change, and under torch.func and torch.compile."""

import contextlib
import copy
import threading

import normflows as nf
import pytest
import torch
import torch._dynamo as dynamo
from torch import nn

from brute_force import perturb_
from normflows_emerging import (
    EmergingConv2d,
    PeriodicConv2d,
    QR1x1,
    SquareAutoregressiveConv2d,
    build_multiscale_flow,
    grouped_weights,
    replace_mixing,
)
from normflows_emerging.flows import grouped as grouped_module

LAYERS = {
    "qr": lambda c: QR1x1(c),
    "qr, 2 reflections": lambda c: QR1x1(c, num_reflections=2),
    "qr, no reflection": lambda c: QR1x1(c, num_reflections=0),
    "autoregressive": lambda c: SquareAutoregressiveConv2d(c, 2),
    "autoregressive flipped 3x3": lambda c: SquareAutoregressiveConv2d(c, 3, flip=True),
    "emerging": lambda c: EmergingConv2d(c),
    "emerging 5x5": lambda c: EmergingConv2d(c, 5),
    "emerging without 1x1": lambda c: EmergingConv2d(c, one_by_one="none"),
    "periodic": lambda c: PeriodicConv2d(c),
    "periodic fft": lambda c: PeriodicConv2d(c, method="fft"),
    "periodic 5x5 without bias": lambda c: PeriodicConv2d(c, 5, bias=False),
}


class Stack(nn.Module):
    """Layers applied one after the other in the density direction, as a model's log_prob."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        log_det = 0
        for layer in self.layers:
            x, part = layer.inverse(x)
            log_det = log_det + part
        return x, log_det


def make_stack(name, count=3, channels=3, dtype=torch.float64):
    torch.manual_seed(0)
    return perturb_(Stack([LAYERS[name](channels) for _ in range(count)]).to(dtype), 0.1)


def run(model, x, grouped):
    """Output, log-det and the gradients of a loss to the input and every parameter."""
    x = x.clone().requires_grad_()
    for p in model.parameters():
        p.grad = None
    if grouped:
        with grouped_weights(model):
            y, log_det = model(x)
    else:
        y, log_det = model(x)
    (y.square().sum() + (y[:, :1] * x[:, :1]).sum() - log_det.sum()).backward()
    return [y.detach(), log_det.detach(), x.grad] + [p.grad for p in model.parameters()]


def assert_same(got, expected, rtol):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        if b is None:  # a parameter without effect (QR1x1 without reflections)
            assert a is None
            continue
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item())


@pytest.fixture
def derivations(monkeypatch):
    """Layer-class names of every group computation, in order."""
    calls = []
    for cls in (QR1x1, SquareAutoregressiveConv2d, EmergingConv2d, PeriodicConv2d):
        derive = cls._derive_group

        def spy(layers, *args, derive=derive):
            calls.append(type(layers[0]).__name__)
            return derive(layers, *args)

        monkeypatch.setattr(cls, "_derive_group", staticmethod(spy))
    return calls


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("name", LAYERS)
def test_grouped_values_and_gradients_equal_the_per_layer_ones(name, dtype, rtol, derivations):
    model = make_stack(name, dtype=dtype).train()
    x = torch.randn(2, 3, 5, 6, dtype=dtype)
    expected = run(model, x, grouped=False)
    assert derivations == []
    got = run(model, x, grouped=True)
    assert len(derivations) == 1  # one computation for the three layers
    assert_same(got, expected, rtol)


@pytest.mark.parametrize("name", ["qr", "autoregressive", "emerging", "periodic"])
def test_gradcheck_through_the_grouped_computation(name):
    model = make_stack(name, count=2, channels=2)
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64)
    params = list(model.parameters())

    def loss(*values):
        replaced = dict(zip((n for n, _ in model.named_parameters()), values))
        with grouped_weights(model):
            # functional_call wraps nothing here: the grouped path runs on the replacements
            y, log_det = torch.func.functional_call(model, replaced, (x,))
        return y.square().sum() - log_det.sum()

    inputs = [p.detach().clone().requires_grad_() for p in params]
    assert torch.autograd.gradcheck(loss, inputs)


def test_grouped_model_log_prob_equals_normflows_per_layer_log_prob(derivations):
    """The builder's model groups its steps (one computation per level and kind); normflows'
    own log_prob on the same model computes per layer: same values."""
    torch.manual_seed(0)
    model = build_multiscale_flow((3, 8, 8), 2, 3, 8, mixing="emerging").double()
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    model.log_prob(x, None)  # initialises the ActNorms
    perturb_(model, 0.02)

    def gradients(fn):
        for p in model.parameters():
            p.grad = None
        log_prob = fn()
        log_prob.sum().backward()
        return [log_prob.detach()] + [p.grad for p in model.parameters()]

    derivations.clear()
    expected = gradients(lambda: nf.MultiscaleFlow.log_prob(model, x, None))
    assert derivations == []
    got = gradients(lambda: model.log_prob(x, None))
    assert derivations == ["EmergingConv2d", "EmergingConv2d"]  # one per level
    assert_same(got, expected, 1e-12)
    derivations.clear()
    latents, log_det = model.inverse_and_log_det(x)
    assert derivations == ["EmergingConv2d", "EmergingConv2d"]
    expected_latents, expected_log_det = nf.MultiscaleFlow.inverse_and_log_det(model, x)
    assert_same(latents + [log_det], expected_latents + [expected_log_det], 1e-12)


@pytest.mark.parametrize("mixing", ["qr", "emerging", "periodic"])
def test_hand_built_normflows_model_with_and_without_the_block(mixing, derivations):
    """normflows' Glow model with its 1x1 layers replaced: the same values either way; only
    inside ``grouped_weights`` are its layers grouped."""
    torch.manual_seed(0)
    blocks = [nf.flows.GlowBlock(12, 8, split_mode="channel") for _ in range(3)]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian((12, 4, 4)), blocks).double()
    replace_mixing(model, mixing)
    perturb_(model, 0.02)
    x = torch.rand(3, 12, 4, 4, dtype=torch.float64)

    def gradients():
        for p in model.parameters():
            p.grad = None
        loss = model.forward_kld(x)
        loss.backward()
        return [loss.detach()] + [p.grad for p in model.parameters() if p.grad is not None]

    expected = gradients()
    assert derivations == []
    with grouped_weights(model):
        got = gradients()
    assert len(derivations) == 1
    assert_same(got, expected, 1e-12)


def test_layers_that_are_not_grouped():
    """Subclasses (they may change the formulas), emerging layers with normflows' LU 1x1 layer
    and eval-mode calls without gradients (the caches serve them) compute their own."""

    class MyQR(QR1x1):
        pass

    model = Stack([MyQR(3), MyQR(3), EmergingConv2d(3, one_by_one="plu"), QR1x1(3)])
    x = torch.randn(2, 3, 4, 4)
    with grouped_weights(model):
        for layer in model.layers:
            expected = layer in (model.layers[3],)
            assert (grouped_module.grouped(layer, 16) is not None) == expected
        model.eval()
        with torch.no_grad():
            for layer in model.layers:  # served by the caches: nothing computed for the group
                torch.testing.assert_close(layer.inverse(x), layer.inverse(x))
    assert grouped_module.grouped(model.layers[3], 16) is None  # after the block


def test_an_emerging_layers_sublayers_are_not_grouped_twice(derivations):
    model = make_stack("emerging")
    with grouped_weights(model):
        model(torch.randn(1, 3, 4, 4, dtype=torch.float64))
        assert grouped_module.grouped(model.layers[0].one_by_one, 16) is None
        assert grouped_module.grouped(model.layers[0].causal, 16) is None
    assert derivations == ["EmergingConv2d"]


def test_recomputed_after_every_kind_of_parameter_change_inside_the_block(derivations):
    """Inside one block: in-place changes, replaced tensors, vector_to_parameters and fused or
    foreach optimizer steps (no version counter bumped) all give the new parameters' values.
    Every model call derives its group (a layer that runs again is another call)."""
    model = make_stack("emerging", dtype=torch.float32).train()
    x = torch.randn(2, 3, 5, 5)
    changes = [
        lambda: model.layers[1].causal.weight.add_(0.1),
        lambda: setattr(model.layers[2].one_by_one.upper, "data", torch.randn(3, 3)),
        lambda: nn.utils.vector_to_parameters(
            nn.utils.parameters_to_vector(model.parameters()) * 1.01, model.parameters()
        ),
    ]
    for kind in ("fused", "foreach", None):
        options = {kind: True} if kind else {}
        optimizer = torch.optim.Adam(model.parameters(), lr=0.1, **options)
        changes.append(lambda optimizer=optimizer: optimizer.step())
    with grouped_weights(model):
        for change in changes:
            y, log_det = model(x)
            (y.sum() + log_det.sum()).backward()
            with torch.no_grad():
                change()
            expected = copy.deepcopy(model)(x)  # a copy's layers are not in the block
            got = model(x)
            assert_same([t.detach() for t in got], [t.detach() for t in expected], 1e-6)
    assert len(derivations) == 2 * len(changes)  # every model call derives its group once


def test_a_call_without_parameter_gradients_leaves_no_graphless_tensors():
    """Breaker's report: normflows' reverse_kld(score_fn=False) runs the density direction with
    the parameters' requires_grad off; a forward_kld after it in the same block took those
    graph-less tensors, and the mixing layers' parameters silently got no gradient."""

    class Target(nf.distributions.Target):
        def log_prob(self, z):
            return -0.5 * z.flatten(1).square().sum(1)

    torch.manual_seed(0)
    flows = [perturb_(QR1x1(3).double(), 0.1) for _ in range(2)]
    base = nf.distributions.DiagGaussian((3, 4, 4)).double()
    model = nf.NormalizingFlow(base, flows, p=Target())
    x = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    grads = []
    for grouped in (False, True):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        with grouped_weights(model) if grouped else contextlib.nullcontext():
            loss = model.reverse_kld(2, score_fn=False) + model.forward_kld(x)
        loss.backward()
        grads.append([p.grad for p in model.parameters()])
    assert_same(grads[1], grads[0], 1e-12)


@pytest.mark.parametrize("name", ["qr", "emerging", "periodic"])
def test_gradient_accumulation_inside_one_block(name, derivations):
    """Two model calls and two backward passes in one block (gradient accumulation) raised
    torch's "backward through the graph a second time": the second call took the first call's
    tensors, whose graph the first backward had freed. Each call now derives its own."""
    model = make_stack(name).train()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    for p in model.parameters():
        p.grad = None
    for chunk in x.split(2):
        y, log_det = model(chunk)
        (y.square().sum() - log_det.sum()).backward()
    expected = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    for p in model.parameters():
        p.grad = None
    with grouped_weights(model):
        for chunk in x.split(2):
            y, log_det = model(chunk)
            (y.square().sum() - log_det.sum()).backward()
    got = [p.grad for p in model.parameters() if p.grad is not None]
    assert_same(got, expected, 1e-12)
    assert len(derivations) == 2


def test_grad_mode_and_inference_mode_inside_one_block():
    """A call without gradients does not hand its tensors to a later call that records them."""
    model = make_stack("qr").train()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    with grouped_weights(model):
        with torch.inference_mode():
            model(x)
        with torch.no_grad():
            model(x)
        y, log_det = model(x)
        (y.sum() + log_det.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_other_threads_never_see_a_blocks_tensors():
    """Thread A holds a block open; thread B, on the same model, computes per layer outside any
    block and gets its own group inside its own block."""
    model = make_stack("qr")
    inside, done = threading.Event(), threading.Event()
    seen = {}

    def thread_a():
        with grouped_weights(model):
            seen["a"] = grouped_module.grouped(model.layers[0], 16)
            inside.set()
            done.wait(10)
            seen["a again"] = grouped_module.grouped(model.layers[0], 16)

    def thread_b():
        inside.wait(10)
        seen["b outside"] = grouped_module.grouped(model.layers[0], 16)
        with grouped_weights(model):
            seen["b"] = grouped_module.grouped(model.layers[0], 16)
        done.set()

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert seen["b outside"] is None
    assert seen["a"] is not None and seen["b"] is not None
    assert seen["a"][0] is not seen["b"][0]  # each block computed its own
    # a layer's second lookup is another model call: A's own block derives it again
    assert seen["a again"][0] is not seen["b"][0]
    torch.testing.assert_close(seen["a again"][0], seen["a"][0], rtol=0, atol=0)


def test_threads_running_one_model_get_the_single_caller_results():
    torch.manual_seed(0)
    model = build_multiscale_flow((3, 8, 8), 2, 2, 4, mixing="emerging").double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    model.log_prob(x, None)
    perturb_(model, 0.02)
    inputs = [torch.rand(2, 3, 8, 8, dtype=torch.float64) for _ in range(4)]
    expected = [nf.MultiscaleFlow.log_prob(model, v, None) for v in inputs]
    results = {}
    barrier = threading.Barrier(4)

    def work(index):
        barrier.wait(10)
        for _ in range(5):
            results.setdefault(index, []).append(model.log_prob(inputs[index], None))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for index, values in results.items():
        for value in values:
            torch.testing.assert_close(value, expected[index], rtol=1e-12, atol=0)
    assert len(results) == 4


def test_nested_blocks_and_bad_argument():
    outer, inner = make_stack("qr", count=2), make_stack("periodic", count=2)
    with grouped_weights(outer), grouped_weights(inner):
        assert grouped_module.grouped(outer.layers[0], 16) is not None
        assert grouped_module.grouped(inner.layers[0], 4, 4, torch.float64) is not None
    with pytest.raises(TypeError, match="torch.nn.Module"):
        with grouped_weights([QR1x1(2)]):
            pass


def test_zero_reflection_vector_is_reported_by_its_layer_in_a_group():
    model = make_stack("qr", dtype=torch.float32)
    with torch.no_grad():
        model.layers[1].reflections[2] = 0
    with grouped_weights(model), pytest.raises(torch.linalg.LinAlgError, match=r"reflections\[2\]"):
        model(torch.randn(1, 3, 4, 4))


def test_compiled_layers_inside_a_block_have_no_graph_break():
    model = make_stack("emerging", dtype=torch.float32).train()
    x = torch.randn(2, 3, 5, 5)
    dynamo.reset()
    with grouped_weights(model):
        explanation = dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons


# torch.func: each transform against the per-layer eager result, float64, 1e-7 relative.
FUNC_LAYERS = ["qr", "autoregressive", "emerging", "periodic"]


def density(model, x):
    with grouped_weights(model):
        return model(x)


def assert_each_close(y, log_det, expected):
    """Batched outputs and log-dets against one eager (output, log-det) per batch entry."""
    for index, (expected_y, expected_log_det) in enumerate(expected):
        torch.testing.assert_close(y[index], expected_y, rtol=1e-7, atol=1e-12)
        torch.testing.assert_close(log_det[index], expected_log_det, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("name", FUNC_LAYERS)
def test_jacrev_and_jvp_with_respect_to_the_input(name):
    model = make_stack(name, count=2, channels=2)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    expected = torch.autograd.functional.jacobian(lambda v: model(v)[0], x)
    jacobian = torch.func.jacrev(lambda v: density(model, v)[0])(x)
    torch.testing.assert_close(jacobian, expected, rtol=1e-7, atol=1e-12)
    tangent = torch.randn_like(x)
    _, pushed = torch.func.jvp(lambda v: density(model, v)[0], (x,), (tangent,))
    torch.testing.assert_close(pushed, torch.einsum("abcd...,...->abcd", expected, tangent))


@pytest.mark.parametrize("name", FUNC_LAYERS)
def test_vmap_over_inputs(name):
    model = make_stack(name, count=2, channels=2)
    xs = torch.randn(3, 2, 2, 4, 3, dtype=torch.float64)
    y, log_det = torch.func.vmap(lambda v: density(model, v))(xs)
    assert_each_close(y, log_det, [model(x) for x in xs])


@pytest.mark.parametrize("name", FUNC_LAYERS)
def test_vmap_over_stacked_parameters(name):
    """On the GPU's code path: on the CPU QR1x1's check of its reflection vectors reads values,
    which vmap refuses (issue 27 makes the checks step aside under transforms)."""
    from dispatch_count import accelerator_path

    members = [make_stack(name, count=2, channels=2) for _ in range(3)]
    for index, member in enumerate(members):
        perturb_(member, 0.05, torch.Generator().manual_seed(index))
    params, buffers = torch.func.stack_module_state(members)
    x = torch.randn(2, 2, 4, 3, dtype=torch.float64)

    def member_density(p, b):
        with grouped_weights(members[0]):
            return torch.func.functional_call(members[0], (p, b), (x,))

    with accelerator_path():
        y, log_det = torch.func.vmap(member_density)(params, buffers)
    assert_each_close(y, log_det, [member(x) for member in members])


@pytest.mark.parametrize("name", FUNC_LAYERS)
def test_grad_of_the_log_det_with_respect_to_the_parameters(name):
    model = make_stack(name, count=2, channels=2)
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64)
    params = dict(model.named_parameters())
    gradient = torch.func.grad(lambda p: density_call(model, p, x)[1].sum())(
        {k: v.detach() for k, v in params.items()}
    )
    model(x)[1].sum().backward()
    for key, value in params.items():
        expected = torch.zeros_like(value) if value.grad is None else value.grad  # the bias
        torch.testing.assert_close(gradient[key], expected, rtol=1e-7, atol=1e-12)


def density_call(model, params, x):
    with grouped_weights(model):
        return torch.func.functional_call(model, params, (x,))
