"""Plugin layers against the patched normflows' layers: state dicts load, same outputs.

For every configuration, a normflows-emerging layer with perturbed parameters (float64) hands its
state dict to the normflows class of the same name, built with the same arguments
(``load_state_dict`` with ``strict=True``: the same parameter names, no conversion). Both
directions are compared on the same inputs: the density direction (``inverse``) and the sampling
direction (``forward``), outputs and log-dets; the largest absolute difference must stay below
``TOLERANCE``. The state dict also goes back (upstream into the plugin). The plugin runs as a user
runs it: its default solve backend, in training mode and in eval mode (with its caches).

    python upstream/equivalence.py --tree DIR

``DIR`` is the patched normflows source tree (``upstream/check`` makes it); it is put first on
``sys.path``, so the plugin runs over the patched normflows too. Prints one row per configuration
and exits with status 1 if any difference exceeds the tolerance.
"""

import argparse
import os
import sys

TOLERANCE = 1e-10

# (class name, constructor arguments) in both packages; the leading arguments are the same.
CONFIGURATIONS = [
    ("QR1x1", (3,), {}),
    ("QR1x1", (4,), {"num_reflections": 2}),
    ("SquareAutoregressiveConv2d", (3,), {"size": 2, "flip": False}),
    ("SquareAutoregressiveConv2d", (3,), {"size": 2, "flip": True, "dilation": 2}),
    ("SquareAutoregressiveConv2d", (3,), {"size": 3, "flip": False, "dilation": 2}),
    ("SquareAutoregressiveConv2d", (2,), {"size": 3, "flip": True, "dilation": 3}),
    ("EmergingConv2d", (3, 3), {}),
    ("EmergingConv2d", (3, 5), {}),
    ("EmergingConv2d", (1, 3), {}),
    ("EmergingConv2d", (3, 3), {"one_by_one": "plu"}),
    ("EmergingConv2d", (3, 3), {"one_by_one": "none"}),
    ("PeriodicConv2d", (3, 1), {}),
    ("PeriodicConv2d", (3, 3), {}),
    ("PeriodicConv2d", (3, 5), {}),
    ("PeriodicConv2d", (2, 3), {"bias": False}),
]
# Batch 2, a non-square image with sides that are odd and even.
SHAPE = (2, 7, 6)


def import_both(tree):
    """normflows from ``tree`` (checked) and normflows_emerging over it."""
    sys.path.insert(0, os.path.abspath(tree))
    import normflows

    if not os.path.abspath(normflows.__file__).startswith(os.path.abspath(tree) + os.sep):
        raise SystemExit(
            f"equivalence: normflows was imported from {normflows.__file__}, not {tree}"
        )
    import normflows_emerging

    return normflows, normflows_emerging


def perturbed(layer, torch):
    """``layer`` in float64 with every parameter moved away from its initial value."""
    layer = layer.double()
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return layer


def largest_difference(plugin_layer, upstream_layer, x, torch):
    """Largest |plugin - upstream| over both directions' outputs and log-dets."""
    differences = []
    with torch.no_grad():
        y_plugin, ld_plugin = plugin_layer.inverse(x)
        y_upstream, ld_upstream = upstream_layer.inverse(x)
        x_plugin, ld_plugin_back = plugin_layer(y_plugin)
        x_upstream, ld_upstream_back = upstream_layer(y_plugin)
    for a, b in [
        (y_plugin, y_upstream),
        (ld_plugin, ld_upstream),
        (x_plugin, x_upstream),
        (ld_plugin_back, ld_upstream_back),
    ]:
        if a.shape != b.shape or a.dtype != b.dtype:
            return float("inf")
        differences.append((a - b).abs().max().item())
    return max(differences)


def compare(name, args, kwargs, normflows, normflows_emerging, torch):
    """Largest difference for one configuration, in training and in eval mode, both ways."""
    plugin_layer = perturbed(getattr(normflows_emerging, name)(*args, **kwargs), torch)
    upstream_layer = getattr(normflows.flows, name)(*args, **kwargs).double()
    upstream_layer.load_state_dict(plugin_layer.state_dict())
    x = torch.randn((SHAPE[0], args[0]) + SHAPE[1:], dtype=torch.float64)
    worst = largest_difference(plugin_layer, upstream_layer, x, torch)
    worst = max(worst, largest_difference(plugin_layer.eval(), upstream_layer.eval(), x, torch))
    # And back: a state dict of the upstream layer loads into the plugin's
    returned = getattr(normflows_emerging, name)(*args, **kwargs).double()
    returned.load_state_dict(upstream_layer.state_dict())
    return max(worst, largest_difference(returned, upstream_layer, x, torch))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", required=True, help="the patched normflows source tree")
    args = parser.parse_args()
    normflows, normflows_emerging = import_both(args.tree)
    import torch

    torch.manual_seed(0)
    worst = 0.0
    failed = []
    print(f"{'layer':62s} max |plugin - upstream|")
    for name, layer_args, kwargs in CONFIGURATIONS:
        label = (
            name
            + "("
            + ", ".join([str(a) for a in layer_args] + [f"{k}={v!r}" for k, v in kwargs.items()])
            + ")"
        )
        try:
            difference = compare(name, layer_args, kwargs, normflows, normflows_emerging, torch)
        except Exception as error:  # a state dict that does not load is a failed configuration
            print(f"{label:62s} FAILED: {type(error).__name__}: {error}".splitlines()[0])
            failed.append(label)
            continue
        worst = max(worst, difference)
        verdict = "" if difference <= TOLERANCE else f"  > {TOLERANCE:g}"
        print(f"{label:62s} {difference:.2e}{verdict}")
        if difference > TOLERANCE:
            failed.append(label)
    print(
        f"equivalence: {len(CONFIGURATIONS) - len(failed)} of {len(CONFIGURATIONS)} "
        f"configurations agree (float64, both directions, outputs and log-dets); "
        f"largest difference {worst:.2e}, tolerance {TOLERANCE:g}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
