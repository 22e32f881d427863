"""The comparison examples: matched budgets, paired statistics, tables, plots, errors."""

import json
import math
import statistics
from pathlib import Path

import pytest

from normflows_emerging.app.checkpoint import CHECKPOINT, load_checkpoint
from normflows_emerging.app.config import TrainConfig, build_model
from normflows_emerging.app.run_folder import METRICS
from normflows_emerging.mixing import mixing_layers
from normflows_emerging.parameters import count_parameters

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = [
    "--levels",
    "1",
    "--hidden-channels",
    "8",
    "--flows-per-level",
    "1",
    "--batch-size",
    "16",
    "--steps",
    "2",
    "--eval-every",
    "2",
    "--no-progress",
]


@pytest.fixture
def compare(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import compare

    monkeypatch.setattr(compare, "TIMING_SECONDS", 0.05)  # enough for a median and an IQR
    return compare


@pytest.fixture
def paired_stats(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import paired_stats

    return paired_stats


def test_paired_difference_matches_a_t_table(paired_stats):
    # differences 2, 3, 4: mean 3, sd 1, t(0.975, 2 degrees of freedom) = 4.303 (printed tables)
    d = paired_stats.paired_difference([12.0, 13.0, 14.0], [10.0, 10.0, 10.0])
    half_width = 4.302653 / math.sqrt(3)
    assert (d.mean, d.seeds) == (3.0, 3)
    assert d.low == pytest.approx(3 - half_width, abs=1e-5)
    assert d.high == pytest.approx(3 + half_width, abs=1e-5)
    assert d.verdict("1x1") == "higher than 1x1 beyond noise"
    assert paired_stats.paired_difference([11.0, 12.0, 13.0], [10.0] * 3).verdict("1x1") == (
        "within noise"
    )  # mean 2, interval 2 ± 2.48 includes 0
    # the same per-seed noise cancels in the pairs: every difference is -0.01
    d = paired_stats.paired_difference([2.99, 3.49, 2.69], [3.0, 3.5, 2.7])
    assert d.high == pytest.approx(-0.01) and d.verdict("1x1") == "lower than 1x1 beyond noise"
    assert paired_stats.paired_difference([1.0, 3.0], [2.0, 2.0]).verdict("1x1") == "within noise"
    one = paired_stats.paired_difference([1.0], [2.0])
    assert (one.mean, one.low, one.high) == (-1.0, None, None)
    assert one.verdict("1x1") == "one seed: no interval"
    with pytest.raises(ValueError, match="same length"):
        paired_stats.paired_difference([1.0, 2.0], [1.0])


def test_matched_widths_are_the_widest_within_the_1x1_budget(compare):
    config = TrainConfig(levels=1, flows_per_level=2, hidden_channels=16)
    mixings = [name for name in mixing_layers() if name != "maf"]
    widths = compare.matched_widths(config, mixings, (1, 8, 8))

    def effective(mixing, width):
        model = build_model(
            config.__class__(levels=1, flows_per_level=2, hidden_channels=width, mixing=mixing),
            (1, 8, 8),
        )
        return count_parameters(model).degrees_of_freedom

    budget = effective("1x1", 16)
    # PLU and QR have exactly 1x1's degrees of freedom (C^2 each)
    assert widths["1x1"] == widths["plu"] == widths["qr"] == 16
    for mixing, width in widths.items():
        assert effective(mixing, width) <= budget
        assert width == 16 or effective(mixing, width + 1) > budget
    assert widths["emerging"] < 16
    # a MAF layer's own networks alone exceed the budget: a clear error, not a silent width
    with pytest.raises(ValueError, match="'maf' has more than the 1x1 model's"):
        compare.matched_widths(config, ["1x1", "maf"], (1, 8, 8))


def test_compare_example_writes_tables_json_and_plot(compare, tmp_path):
    out = tmp_path / "cmp"
    table = compare.run(
        [
            "--mixings",
            "1x1",
            "emerging",
            "--seeds",
            "0",
            "1",
            *TINY,
            "--naive-timing",
            "--out",
            str(out),
        ]
    )
    assert (out / "results.md").read_text() == table
    assert table.startswith(
        "digits: 1 level of 1 step, coupling widths shrunk to at most the "
        "1x1 model's degrees of freedom (parameters that change the map); 2 training steps of "
        "batch 16; "
        "2 seeds (0 1); cpu."
    )
    lines = table.strip().splitlines()
    assert lines[3].startswith(
        "| mixing | hidden | degrees of freedom / parameters stored | "
        "test bits/dim | Δ vs 1x1 [95% CI] | verdict | sample ms/image "
        "| naive sample ms/image | train s (wall) |"
    )
    cells = [line.split(" | ") for line in lines[5:]]
    assert [row[0] for row in cells] == ["| 1x1", "| emerging"]

    results = json.loads((out / "results.json").read_text())
    assert results["mixings"] == ["1x1", "emerging"] and results["seeds"] == [0, 1]
    assert "mixing" not in results["config"] and "seed" not in results["config"]
    runs = {(run["mixing"], run["seed"]): run for run in results["runs"]}
    baseline, emerging = results["rows"]
    assert emerging["hidden_channels"] < baseline["hidden_channels"] == 8
    assert emerging["degrees_of_freedom"] <= baseline["degrees_of_freedom"]
    assert emerging["parameters_total"] > emerging["degrees_of_freedom"]
    differences = [runs["emerging", s]["test_bpd"] - runs["1x1", s]["test_bpd"] for s in (0, 1)]
    assert emerging["difference"]["mean"] == pytest.approx(statistics.fmean(differences))
    assert float(cells[1][4].split()[0]) == pytest.approx(statistics.fmean(differences), abs=1e-3)
    bpds = [runs["emerging", s]["test_bpd"] for s in (0, 1)]
    assert cells[1][3] == f"{statistics.fmean(bpds):.3f} ± {statistics.stdev(bpds):.3f}"
    for run in results["runs"]:
        assert len(run["sample_ms"]) >= 1 and min(run["sample_ms"]) > 0
        checkpoint = out / f"{run['mixing']}-seed{run['seed']}" / CHECKPOINT
        model, saved = load_checkpoint(checkpoint)
        assert saved["config"].hidden_channels == run["hidden_channels"]
        assert count_parameters(model).degrees_of_freedom == run["degrees_of_freedom"]
    assert emerging["sample_ms_iqr"] >= 0 and emerging["naive_sample_ms_median"] > 0
    assert (out / "curves.png").is_file()


def test_progress_names_each_run_and_the_output_says_where_it_went(compare, tmp_path, capsys):
    """Issue 24: ten bars read `train 1x1` / `train emerging`, without seed or run number, and
    the script never said where it wrote its results."""
    out = tmp_path / "cmp"
    argv = ["--mixings", "1x1", "qr", "--seeds", "0", "1", *TINY, "--out", str(out)]
    argv.remove("--no-progress")
    compare.run(argv)
    captured = capsys.readouterr()
    labels = [line.split(":", 2)[:2] for line in captured.err.splitlines() if ": step 2/2" in line]
    assert labels == [
        ["run 1 of 4", " 1x1, seed 0"],
        ["run 2 of 4", " 1x1, seed 1"],
        ["run 3 of 4", " qr, seed 0"],
        ["run 4 of 4", " qr, seed 1"],
    ]
    last = captured.out.strip().splitlines()[-1]
    assert last == (
        f"Written: {out / 'results.md'} (this table), {out / 'results.json'}, {out / 'curves.png'}"
    )


def test_a_rerun_into_the_same_folder_is_refused_or_replaces_the_old_curves(
    compare, tmp_path, capsys
):
    out = tmp_path / "cmp"
    tiny = [arg if arg != "2" else "3" for arg in TINY]  # 3 steps, evaluated at step 3
    compare.run(["--mixings", "1x1", "--seeds", "0", *TINY, "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        compare.run(["--mixings", "1x1", "--seeds", "0", *tiny, "--out", str(out)])
    assert exit_info.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
    compare.run(["--mixings", "1x1", "--seeds", "0", *tiny, "--out", str(out), "--overwrite"])
    lines = (out / "1x1-seed0" / METRICS).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [3]


def test_curves_have_distinct_styles_and_a_title(compare, tmp_path):
    runs = []
    for mixing in ["1x1", "plu", "qr"]:
        folder = tmp_path / f"{mixing}-seed0"
        folder.mkdir()
        # identical curves, as when plu and qr cover 1x1 exactly
        (folder / METRICS).write_text(
            "".join(json.dumps({"step": s, "test_bpd": 3.0}) + "\n" for s in (1, 2))
        )
        runs.append({"mixing": mixing, "seed": 0})
    fig = compare.plot_curves(tmp_path, runs, "digits, 1 seed")
    lines = fig.axes[0].get_lines()
    assert len({(line.get_marker(), str(line.get_linestyle())) for line in lines}) == 3
    assert fig.axes[0].get_title() == "digits, 1 seed"
    assert (tmp_path / "curves.png").is_file()


def test_depth_sweep_writes_gain_table_and_plot(compare, tmp_path):
    out = tmp_path / "sweep"
    text = compare.run(
        [
            "--mixings",
            "1x1",
            "emerging",
            "--seeds",
            "0",
            "1",
            "--depths",
            "2",
            "1",
            *TINY,
            "--out",
            str(out),
        ]
    )
    assert (out / "depths.md").read_text() == text
    assert "1 level of 2/1 steps" in text
    rows = [line.split(" | ") for line in text.strip().splitlines()[5:]]
    assert [(row[0], row[1]) for row in rows] == [
        ("| 2", "1x1"),
        ("| 2", "emerging"),
        ("| 1", "1x1"),
        ("| 1", "emerging"),
    ]
    for depth, row in zip((2, 1), rows[1::2]):
        results = json.loads((out / f"depth-{depth}" / "results.json").read_text())
        assert results["flows_per_level"] == depth
        difference = results["rows"][1]["difference"]
        assert float(row[5].split()[0]) == pytest.approx(-difference["mean"], abs=1e-3)
    sizes = [int(row[3].replace(",", "")) for row in rows[0::2]]
    assert sizes[0] > sizes[1]
    assert (out / "depths.png").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "0", "0"], "--seeds lists a value twice"),
        (["--mixings", "emerging", "qr", "--depths", "2"], "add it to --mixings"),
        (["--depths", "0"], "expected an integer of at least 1, got '0'"),
        (["--seeds", "-1"], "expected an integer of at least 0, got '-1'"),
    ],
)
def test_compare_rejects_bad_arguments_in_one_line(compare, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        compare.run(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_model_that_cannot_sample_keeps_its_likelihood_in_the_table(compare):
    def run(mixing, seed, bpd, sample_ms):
        return {
            "mixing": mixing,
            "seed": seed,
            "hidden_channels": 4,
            "test_bpd": bpd,
            "inverse_error": 1e-7,
            "parameters_total": 10,
            "degrees_of_freedom": 9,
            "train_seconds": 1.0,
            "sample_ms": sample_ms,
        }

    runs = [
        run("1x1", 0, 3.0, [0.1, 0.2]),
        run("1x1", 1, 3.1, [0.1, 0.3]),
        run("emerging", 0, 2.9, []),  # its model cannot sample
        # differences to 1x1 of unequal sizes: two equal ones (-0.1, -0.1 up to rounding) made
        # scipy warn of precision loss in its t interval (a warning leaked into every run)
        run("emerging", 1, 3.05, [0.2, 0.2]),
        run("qr", 0, 3.0, []),
        run("qr", 1, 3.0, []),
    ]
    rows = {row["mixing"]: row for row in compare.summarize(runs)}
    assert rows["emerging"]["sample_ms_failed_runs"] == 1
    assert rows["emerging"]["sample_ms_median"] == 0.2
    assert rows["emerging"]["test_bpd_mean"] == pytest.approx(2.975)
    assert rows["qr"]["sample_ms_median"] is None
    table = compare.markdown_table(list(rows.values()))
    assert "0.20 (0.00); 1 of 2 seeds cannot sample" in table
    assert "| cannot sample |" in table
