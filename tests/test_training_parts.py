"""Parts of training: eval_mode, warm-up schedule, dequantisation depth, progress, timing."""

import io

import pytest
import torch

from normflows_emerging.app.config import TrainConfig, build_model
from normflows_emerging.app.evaluation import dequantize, sample_timing
from normflows_emerging.app.progress import Progress
from normflows_emerging.app.train import warmup_schedule
from normflows_emerging.modes import eval_mode


def test_eval_mode_restores_every_submodule_also_on_exceptions():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout())
    model.train()
    model[1].eval()  # a submodule in another mode than its parent keeps it
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        assert not any(m.training for m in model.modules())
        raise RuntimeError("boom")
    assert model.training and model[0].training and not model[1].training


@pytest.mark.parametrize(
    "warmup, factors", [(3, [1 / 3, 2 / 3, 1, 1, 1]), (0, [1] * 5), (1, [1] * 5)]
)
def test_warmup_schedule_is_linear_over_the_first_steps(warmup, factors):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    schedule = warmup_schedule(optimizer, warmup)
    seen = []
    for _ in factors:
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx([0.5 * f for f in factors], rel=1e-15)


def test_dequantize_16_bit_levels_is_correctly_rounded():
    generator = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 65536, (10000,), dtype=torch.int32, generator=generator)
    noise = torch.rand(10000, generator=generator)
    x = dequantize(levels, 65536, noise)
    exact = ((levels.double() + noise.double()) / 65536).float().clamp(max=1 - 2**-24)
    assert x.dtype == torch.float32
    assert torch.equal(x, exact)


def test_dequantize_stays_in_the_bins_and_below_one():
    images = torch.arange(256, dtype=torch.uint8)
    x = dequantize(images, 256, torch.full((256,), 1 - 2**-24)).double()
    k = images.double()
    assert x.max() < 1 and (x >= k / 256).all() and (x <= (k + 1) / 256).all()


def test_plain_progress_lines_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(10, description="train qr", stream=stream, log_every=4)
    for step in range(1, 11):
        progress.update(step, 3.25)
        if step == 5:
            progress.write("step 5: test bits/dim 3.0")
    progress.close()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "train qr: step 4/10, 3.250 bits/dim",
        "step 5: test bits/dim 3.0",
        "train qr: step 8/10, 3.250 bits/dim",
        "train qr: step 10/10, 3.250 bits/dim",
    ]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_on_a_terminal_and_nothing_when_disabled():
    stream = Terminal()
    progress = Progress(3, description="train qr", stream=stream)
    for step in (1, 2, 3):
        progress.update(step, 3.25)
    progress.close()
    assert "\r" in stream.getvalue() and "3.250 bits/dim" in stream.getvalue()
    assert "loss" not in stream.getvalue()  # no nats beside the bits (issue 24)
    quiet = io.StringIO()
    progress = Progress(3, stream=quiet, enabled=False)
    progress.update(3, 2.0)
    progress.write("message")
    assert quiet.getvalue() == "message\n"


def test_sample_timing_reports_median_and_spread_of_several_runs():
    model = build_model(TrainConfig(levels=1, flows_per_level=1, hidden_channels=4), (1, 4, 4))
    model.train()
    measurement = sample_timing(model, num_samples=2, repeats=5)
    assert len(measurement.times) == 5  # several timed runs, not one reading
    assert measurement.median > 0 and measurement.iqr >= 0
    assert model.training  # modes restored
