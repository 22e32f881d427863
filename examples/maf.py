"""The paper's Table 5: MAF vs 1x1 vs emerging convolutions, bits/dim and sampling speed.

Masked autoregressive flows (here: a PLU 1x1 convolution followed by two masked autoregressive
layers in opposite pixel orders, the "maf" mixing layer) are flexible but slow to sample from,
since every element is solved in turn. Emerging convolutions keep most of the gain at a much
lower sampling cost. The table also times sampling with the naive solves (``--naive-timing``, on by
default here): the element-by-element solve of the autoregressive convolutions and the
full-network-per-element solve of the MAF layers, the paper's "naive" column. Each MAF layer
has its own masked network (96 hidden channels), more degrees of freedom than a whole 1x1
model of this size, so budgets are not matched here (``--no-match-budget`` is the default):
read the bits/dim together with the parameter counts. Defaults: the bundled digits, 3 seeds, a
few minutes on one CPU thread:

    python examples/maf.py

Paper-size run on a GPU (CIFAR-10, 3 levels of 8 steps):

    python examples/maf.py --dataset cifar10 --download --levels 3 --flows-per-level 8 \\
        --hidden-channels 512 --steps 200000 --eval-every 5000 --device cuda --out runs/table5

Same options and outputs as ``compare.py`` (results.md, results.json, curves.png).
"""

from compare import run
from normflows_emerging.app.config import TrainConfig

DEFAULTS = TrainConfig(
    dataset="digits",
    levels=1,
    flows_per_level=4,
    hidden_channels=32,
    batch_size=64,
    steps=500,
    warmup=50,
    eval_every=100,
)

if __name__ == "__main__":
    run(
        description=__doc__,
        defaults=DEFAULTS,
        mixings=("1x1", "maf", "emerging"),
        out="runs/maf",
        naive_timing=True,
        match_budget=False,
        seeds=(0, 1, 2),
    )
