"""Eval-mode caches follow every way of changing a parameter's values (issue 9, item 5)."""

import copy

import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from brute_force import perturb_
from dispatch_count import accelerator_path
from normflows_emerging import EmergingConv2d, PeriodicConv2d, QR1x1, SquareAutoregressiveConv2d


def make_periodic():
    return perturb_(PeriodicConv2d(4, 3).double(), std=0.1)


def make_qr():
    return perturb_(QR1x1(4).double())


def make_autoregressive():
    return perturb_(SquareAutoregressiveConv2d(4, 2, flip=True).double(), std=0.1)


def make_emerging():
    return perturb_(EmergingConv2d(4, 3).double(), std=0.1)


def make_emerging_without_1x1():
    return perturb_(EmergingConv2d(4, 3, one_by_one="none").double(), std=0.1)


LAYERS = {
    "periodic": make_periodic,
    "qr": make_qr,
    "autoregressive": make_autoregressive,
    "emerging": make_emerging,
    "emerging without 1x1": make_emerging_without_1x1,
}


def fresh_outputs(layer, z, x):
    """Sampling and density outputs computed from scratch (training mode never caches)."""
    reference = copy.deepcopy(layer).train()
    with torch.no_grad():
        return reference(z), reference.inverse(x)


def other_values(layer, seed):
    """A state with different values for every parameter."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: p + 0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype)
        for name, p in layer.named_parameters()
    }


def by_inplace_no_grad(layer, new):
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(new[name])


def by_data_assignment(layer, new):
    for name, p in layer.named_parameters():
        p.data = new[name].clone()


def by_data_copy(layer, new):
    for name, p in layer.named_parameters():
        p.data.copy_(new[name])


def by_load_state_dict(layer, new):
    layer.load_state_dict({**layer.state_dict(), **new})


def by_vector_to_parameters(layer, new):
    vector_to_parameters(
        parameters_to_vector([new[n] for n, _ in layer.named_parameters()]), layer.parameters()
    )


def by_ema_lerp(layer, new):
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.lerp_(new[name], 0.5)


ROUTES = [
    by_inplace_no_grad,
    by_data_assignment,
    by_data_copy,
    by_load_state_dict,
    by_vector_to_parameters,
    by_ema_lerp,
]


@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.__name__)
def test_cache_follows_every_route(make, route):
    layer = make().eval()
    z = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        before = layer(z), layer.inverse(x)  # fills the cache
        torch.testing.assert_close((layer(z), layer.inverse(x)), before)  # served from it
    route(layer, other_values(layer, seed=1))
    with torch.no_grad():
        after = layer(z), layer.inverse(x)
    torch.testing.assert_close(after, fresh_outputs(layer, z, x))
    assert not torch.allclose(after[0][0], before[0][0])


@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
def test_cache_follows_replaced_tensors_when_addresses_are_reused(make):
    """Each new weight may reuse the freed storage of the previous one (same address)."""
    layer = make().eval()
    z = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    for _ in range(6):
        with torch.no_grad():
            layer(z)
        for p in layer.parameters():
            new = p.detach() + 0.1 * torch.randn_like(p)
            p.data = torch.empty(0)  # frees the old storage: the copy below may land there
            p.data = new.clone()
        with torch.no_grad():
            torch.testing.assert_close(layer(z), fresh_outputs(layer, z, z)[0])


def test_qr_cache_is_used_in_eval_mode_only(monkeypatch):
    layer = make_qr().eval()
    calls = []
    original = QR1x1.orthogonal
    monkeypatch.setattr(QR1x1, "orthogonal", lambda self: calls.append(1) or original(self))
    z = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(3):
            layer(z)
    assert len(calls) == 1
    layer.train()
    with torch.no_grad():
        layer(z)
    assert len(calls) == 2
    layer.eval()
    layer(z)  # gradients recorded: nothing cached, so gradients reach the parameters
    assert len(calls) == 3


def count_kernel_assemblies(monkeypatch):
    """A list that grows by one with every autoregressive kernel assembly."""
    calls = []
    original = SquareAutoregressiveConv2d._assemble  # every kernel assembly goes through it
    monkeypatch.setattr(
        SquareAutoregressiveConv2d,
        "_assemble",
        lambda self, log_d: calls.append(1) or original(self, log_d),
    )
    return calls


def test_autoregressive_kernel_is_assembled_once_in_eval_mode(monkeypatch):
    layer = make_autoregressive().eval()
    calls = count_kernel_assemblies(monkeypatch)
    z = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(3):
            layer(z)
            layer.inverse(z)
    assert len(calls) == 1
    layer(z)  # gradients recorded: assembled again, so they reach the parameters
    assert len(calls) == 2


@pytest.mark.parametrize(
    "make", [make_autoregressive, make_emerging], ids=["autoregressive", "emerging"]
)
def test_cache_follows_in_place_changes_of_constant_buffers(make):
    """Masks are watched by identity and version (cheaper than values): an in-place change or a
    replacement of a buffer is still seen."""
    layer = make().eval()
    z = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    for buffer_name in ("mask", "corner_diagonal"):
        with torch.no_grad():
            layer(z)  # fills the cache
            for module in layer.modules():
                if isinstance(module, SquareAutoregressiveConv2d):
                    getattr(module, buffer_name)[0, 0, 0, 0] += 0.5
            torch.testing.assert_close(layer(z), fresh_outputs(layer, z, z)[0])
    for module in layer.modules():
        if isinstance(module, SquareAutoregressiveConv2d):
            module.mask = module.mask * 0.5
    with torch.no_grad():
        torch.testing.assert_close(layer(z), fresh_outputs(layer, z, z)[0])


def test_emerging_plan_is_built_once_in_eval_mode(monkeypatch):
    """Both directions of EmergingConv2d share one plan per parameter values in eval mode."""
    layer = make_emerging().eval()
    calls = count_kernel_assemblies(monkeypatch)
    z = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        first = layer(z), layer.inverse(z)
        for _ in range(3):
            torch.testing.assert_close((layer(z), layer.inverse(z)), first)
    assert len(calls) == 2  # one kernel per autoregressive layer, once
    layer(z)  # gradients recorded: the plan is bypassed, so gradients reach the parameters
    assert len(calls) == 4
    with torch.no_grad():
        torch.testing.assert_close(first, fresh_outputs(layer, z, z))


@pytest.mark.parametrize(
    "make", [make_autoregressive, make_emerging], ids=["autoregressive", "emerging"]
)
@pytest.mark.parametrize("how", ["built", "converted"])
def test_cache_follows_constant_buffers_that_are_inference_tensors(make, how):
    """A layer built or converted under inference_mode holds inference-tensor masks, which have no
    version counter: sampling must work and still see an in-place change of a mask."""
    z = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    with torch.inference_mode():
        if how == "built":
            layer = make().eval()
        else:
            layer = make().float().eval()
            layer.double()
        assert all(
            module.mask.is_inference()
            for module in layer.modules()
            if isinstance(module, SquareAutoregressiveConv2d)
        )
        first = layer(z)
        torch.testing.assert_close(first, layer.train()(z))
        for module in layer.modules():
            if isinstance(module, SquareAutoregressiveConv2d):
                module.mask[0, 0, 0, 0] -= 1  # drops a tap the mask kept
        changed = layer.eval()(z)
        torch.testing.assert_close(changed, layer.train()(z))
    assert not torch.allclose(changed[0], first[0])


class DensityDirection(torch.nn.Module):
    """``layer.inverse`` as a module's forward, for torch.func.functional_call."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer.inverse(x)


def density(layer, parameters, x):
    """``layer.inverse(x)`` with the parameters replaced by ``parameters`` (name -> tensor)."""
    replaced = {f"layer.{name}": p for name, p in parameters.items()}
    return torch.func.functional_call(DensityDirection(layer), replaced, (x,))


def forward_mode_derivative(layer, parameters, tangents, x):
    """d/dt of sum(y) + sum(log_det) of the density direction at ``parameters + t * tangents``,
    by forward-mode AD (dual tensors)."""
    with forward_ad.dual_level():
        duals = {name: forward_ad.make_dual(p, tangents[name]) for name, p in parameters.items()}
        y, log_det = density(layer, duals, x)
        return forward_ad.unpack_dual(y.sum() + log_det.sum()).tangent


# torch.func.jvp through torch.fft uses torch.jit.script internally, which warns on this torch
# (a FutureWarning on torch 2.14, a DeprecationWarning on 2.13)
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
def test_forward_mode_derivatives_with_respect_to_parameters_in_eval_mode(make):
    """Dual (forward-mode) parameters report requires_grad=False: a cached result would drop their
    tangents and give a wrong derivative without any error."""
    layer = make().eval()
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    parameters = {name: p.detach().clone() for name, p in layer.named_parameters()}
    tangents = other_values(layer, seed=2)
    with torch.no_grad():
        layer.inverse(x)  # fills the cache with the same parameter values
    expected = forward_mode_derivative(copy.deepcopy(layer).train(), parameters, tangents, x)
    torch.testing.assert_close(forward_mode_derivative(layer, parameters, tangents, x), expected)
    _, jvp = torch.func.jvp(
        lambda p: sum(t.sum() for t in density(layer, p, x)), (parameters,), (tangents,)
    )
    torch.testing.assert_close(jvp, expected)


@pytest.mark.parametrize(
    "make", [make_periodic, make_autoregressive], ids=["periodic", "autoregressive"]
)
def test_vmap_over_stacked_parameters_in_eval_mode(make):
    """An ensemble evaluated with torch.func.vmap over stacked parameters: each member's result."""
    members = [make().eval() for _ in range(3)]
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = [member.inverse(x) for member in members]
        members[0].inverse(x)  # fills the cache of the layer vmap runs
        stacked, _ = torch.func.stack_module_state(members)
        outputs, log_dets = torch.func.vmap(lambda p: density(members[0], p, x))(stacked)
    for i, (output, log_det) in enumerate(expected):
        torch.testing.assert_close((outputs[i], log_dets[i]), (output, log_det))


OPTIMIZERS = [
    (optimizer, options)
    for optimizer in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.Adagrad)
    for options in ({"fused": True}, {"foreach": True}, {"foreach": False})
]


@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
@pytest.mark.parametrize(
    "optimizer, options", OPTIMIZERS, ids=lambda v: getattr(v, "__name__", None) or str(v)
)
def test_cache_is_fresh_after_any_optimizer_step_on_the_accelerator_path(make, optimizer, options):
    """Fused optimizers bump no version counter (issue 27: eval outputs off by 1-30% after one
    step); on the GPU path the caches compare no values, so the optimizer step hooks must say."""
    layer = make().eval()
    z = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    step = optimizer(layer.parameters(), lr=0.05, **options)
    for p in layer.parameters():
        p.grad = torch.randn_like(p)
    with accelerator_path(), torch.no_grad():
        before = layer(z), layer.inverse(x)  # fills the cache
        step.step()
        after = layer(z), layer.inverse(x)
    torch.testing.assert_close(after, fresh_outputs(layer, z, x))
    assert not torch.allclose(after[0][0], before[0][0])


@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
def test_parameters_viewing_a_flat_vector_are_not_cached_on_the_accelerator_path(make):
    """After ``vector_to_parameters(vec, ...)`` the parameters are views of ``vec``; in-place
    updates of ``vec`` bump no counter the parameters share (issue 27: 0.79 off on
    EmergingConv2d)."""
    layer = make().eval()
    vec = parameters_to_vector(layer.parameters()).clone()
    vector_to_parameters(vec, layer.parameters())
    z = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    with accelerator_path(), torch.no_grad():
        before = layer(z), layer.inverse(x)
        vec.add_(0.05 * torch.randn_like(vec))
        after = layer(z), layer.inverse(x)
    torch.testing.assert_close(after, fresh_outputs(layer, z, x))
    assert not torch.allclose(after[0][0], before[0][0])


def test_emerging_sampling_runs_hooks_of_its_sublayers():
    """A forward pre-hook on a sublayer (as old-style weight_norm uses) keeps running in eval mode:
    the plan, which does not call the sublayers, is not used then."""
    layer = make_emerging().eval()
    z = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    calls = []
    layer.causal.register_forward_pre_hook(lambda module, args: calls.append(1))
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(layer(z), fresh_outputs(layer, z, z)[0])
    assert len(calls) == 4  # two calls of the layer and two of its fresh copies


def test_emerging_sampling_runs_global_module_hooks():
    """Breaker's report: a global forward hook (register_module_forward_hook) that changes a
    sublayer's output ran in train mode and not in eval mode (the plan skips the sublayers'
    calls), so the two modes sampled different images."""
    from torch.nn.modules.module import register_module_forward_hook

    layer = make_emerging()
    z = torch.randn(1, 4, 3, 3, dtype=torch.float64)

    def doubled(module, args, output):
        if isinstance(module, SquareAutoregressiveConv2d):
            return output[0] * 2, output[1]
        return None

    handle = register_module_forward_hook(doubled)
    try:
        with torch.no_grad():
            trained = layer.train()(z)
            evaluated = layer.eval()(z)
    finally:
        handle.remove()
    torch.testing.assert_close(evaluated, trained)
