"""Emerging, periodic and QR convolutions inside an nflows model.

``normflows_emerging.nflows`` wraps the layers as nflows ``Transform``\\ s, so they compose with
nflows' own transforms in a ``CompositeTransform``. This builds a small single-scale image flow
(squeeze, then steps of ActNorm, an invertible convolution and an affine coupling) on a standard
normal base, trains it with this package's training loop and prints the test bits/dim and the
round-trip error as a JSON line. Defaults run on the bundled digits in about a minute on one CPU
thread; ``--overwrite`` replaces an earlier run in the same folder:

    python examples/nflows_example.py
    python examples/nflows_example.py --layer periodic

Larger runs, e.g. on a GPU:

    python examples/nflows_example.py --dataset cifar10 --download --steps 100000 \\
        --flows-per-level 16 --hidden-channels 256 --device cuda
"""

import json
import sys

import torch

try:
    from nflows.distributions import StandardNormal
    from nflows.transforms import (
        ActNorm,
        AffineCouplingTransform,
        CompositeTransform,
        SqueezeTransform,
    )
except ImportError:  # the nflows extra: one line, not a traceback
    sys.stderr.write("nflows_example.py: error: this example needs nflows: pip install nflows\n")
    sys.exit(2)

from example_cli import example_parser, parse_config, run_example
from normflows_emerging.app import evaluation
from normflows_emerging.app import train as training
from normflows_emerging.app.config import TrainConfig, load_datasets
from normflows_emerging.app.run_folder import prepare_run_folder
from normflows_emerging.nflows import (
    EmergingConv2dTransform,
    PeriodicConv2dTransform,
    QR1x1Transform,
)
from normflows_emerging.parameters import count_parameters

LAYERS = {
    "emerging": EmergingConv2dTransform,
    "periodic": PeriodicConv2dTransform,
    "qr": QR1x1Transform,
}
DEFAULTS = TrainConfig(
    dataset="digits",
    flows_per_level=4,
    hidden_channels=32,
    batch_size=64,
    steps=400,
    warmup=50,
    eval_every=100,
)


class CouplingNet(torch.nn.Module):
    """3x3 - 1x1 - 3x3 convolutional network of a coupling layer, starting at zero.

    Args:
      in_channels: channels it reads
      out_channels: channels it returns (shifts and scales)
      hidden_channels: hidden channels
    """

    def __init__(self, in_channels, out_channels, hidden_channels):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(hidden_channels, hidden_channels, 1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(hidden_channels, out_channels, 3, padding=1),
        )
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)

    def forward(self, x, context=None):
        """nflows calls the network with a context, unused here."""
        return self.net(x)


def image_transform(input_shape, num_steps, hidden_channels, layer):
    """An nflows transform: squeeze, then ``num_steps`` x (ActNorm, ``layer``, affine coupling).

    Args:
      input_shape: (channels, height, width), even sides
      num_steps: number of flow steps
      hidden_channels: hidden channels of the coupling networks
      layer: transform class taking the number of channels, e.g. ``EmergingConv2dTransform``

    Returns:
      ``nflows.transforms.CompositeTransform`` from (batch, *input_shape) to latents of shape
      (batch, 4 * channels, height / 2, width / 2)
    """
    channels = input_shape[0]
    c = 4 * channels
    mask = torch.arange(c) % 2  # the coupling transforms every other channel
    transforms = [SqueezeTransform()]
    for _ in range(num_steps):
        transforms += [
            ActNorm(c),
            layer(c),
            AffineCouplingTransform(mask, lambda i, o: CouplingNet(i, o, hidden_channels)),
        ]
    return CompositeTransform(transforms)


class NflowsModel(torch.nn.Module):
    """An nflows transform on a standard normal base, with the interface of the training loop.

    ``forward(x, y)`` is the negative log-likelihood, ``-(log N(z) + log|det dz/dx|)`` as
    nflows' ``Flow.log_prob`` computes it; ``sample(n, temperature=t)`` scales the base samples
    by ``t``, which nflows' ``Flow`` offers no public way to do, hence the model holds the
    transform and the base itself.

    Args:
      transform: nflows transform from images to latents
      latent_shape: shape of one latent, (channels, height, width)
    """

    def __init__(self, transform, latent_shape):
        super().__init__()
        self.transform = transform
        self.distribution = StandardNormal(list(latent_shape))

    def forward(self, x, y=None):
        z, log_det = self.transform(x)
        return -(self.distribution.log_prob(z) + log_det)

    def sample(self, num_samples, y=None, temperature=None):
        z = self.distribution.sample(num_samples)
        if temperature is not None:
            z = z * temperature
        x, _ = self.transform.inverse(z)
        return x, None


def main(argv=None):
    """Train the nflows model and print its evaluation."""
    parser = example_parser(
        __doc__,
        DEFAULTS,
        "runs/nflows",
        exclude=("mixing", "mixing_kwargs", "levels", "num_classes"),
        resume=False,
    )
    parser.add_argument(
        "--layer",
        choices=sorted(LAYERS),
        default="emerging",
        help="invertible convolution of each step (default: emerging)",
    )
    args, config = parse_config(parser, DEFAULTS, argv)
    # refused before the data loads; the message offers --overwrite (there is no --resume here)
    prepare_run_folder(args.out, overwrite=args.overwrite, remove=False, resumable=False)

    train_set, test_set = load_datasets(config)
    shape = tuple(train_set[0][0].shape)
    torch.manual_seed(config.seed)
    transform = image_transform(
        shape, config.flows_per_level, config.hidden_channels, LAYERS[args.layer]
    )
    model = NflowsModel(transform, (4 * shape[0], shape[1] // 2, shape[2] // 2))
    training.fit(
        model,
        train_set,
        test_set,
        config,
        args.out,
        args.device,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    images = torch.stack([test_set[i][0] for i in range(64)])
    x = evaluation.dequantize(images, test_set.num_bins).to(args.device)
    with torch.no_grad():
        z, _ = model.transform(x)
        x_again, _ = model.transform.inverse(z)
    print(
        json.dumps(
            {
                "layer": args.layer,
                "test_bpd": evaluation.evaluate_bpd(
                    model, test_set, device=args.device, seed=config.seed
                ),
                "inverse_error": (x_again - x).abs().max().item(),
                "degrees_of_freedom": count_parameters(model).degrees_of_freedom,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(run_example(main))
