"""Run folders: a second run never mixes into the first, --overwrite cleans, umask honoured."""

import json
import os
import stat

import pytest

from normflows_emerging.app.checkpoint import atomic_write
from normflows_emerging.app.cli import main
from normflows_emerging.app.errors import RunFolderError
from normflows_emerging.app.run_folder import prepare_run_folder, truncate_metrics

TINY = [
    "--dataset",
    "digits",
    "--levels",
    "1",
    "--flows-per-level",
    "1",
    "--hidden-channels",
    "4",
    "--batch-size",
    "16",
    "--eval-batch-size",
    "512",
    "--no-progress",
]


def steps_in(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_second_run_without_resume_is_refused_and_overwrite_starts_clean(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "4", "--eval-every", "2", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    with pytest.raises(SystemExit) as exc:
        main(["train", *TINY, "--steps", "1", "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"{out} already holds a training run" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched

    (out / "notes.txt").write_text("mine")
    assert main(["train", *TINY, "--steps", "1", "--out", str(out), "--overwrite"]) == 0
    assert steps_in(out) == [1]  # the old run's lines 2, 4 are gone
    assert (out / "notes.txt").read_text() == "mine"  # files that are not the run's are kept


def test_resume_and_overwrite_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", *TINY, "--out", str(tmp_path), "--resume", "--overwrite"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(ValueError, match="exclude each other"):
        prepare_run_folder(tmp_path, resume=True, overwrite=True)


def test_output_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(RunFolderError, match="is a file"):
        prepare_run_folder(tmp_path / "f")


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_write_honours_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
        expected = 0o666 & ~umask
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == expected
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_truncate_metrics_drops_later_steps_and_a_line_cut_by_a_crash(tmp_path):
    lines = [json.dumps({"step": s}) for s in (2, 4, 6)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 8, "te')
    truncate_metrics(tmp_path, 4)
    assert steps_in(tmp_path) == [2, 4]
    (tmp_path / "metrics.jsonl").write_text('{"st\n' + lines[0] + "\n")
    with pytest.raises(RunFolderError, match="line 1 is not JSON"):
        truncate_metrics(tmp_path, 4)


@pytest.mark.parametrize(
    "line", ["[1, 2]", '"text"', "7", '{"test_bpd": 1.0}', '{"step": "2"}', "null"]
)
def test_truncate_metrics_names_a_line_that_is_not_a_record(tmp_path, line, capsys):
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"step": 2}) + "\n" + line + "\n" + json.dumps({"step": 4}) + "\n"
    )
    with pytest.raises(RunFolderError, match=r"metrics\.jsonl line 2 is not a metrics record"):
        truncate_metrics(tmp_path, 4)


def test_resume_with_a_metrics_line_that_is_not_a_record_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "1", "--out", str(out)]) == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write("[1, 2]\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["train", *TINY, "--steps", "2", "--resume", "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        f"normflows-emerging train: error: {out / 'metrics.jsonl'} line 2 is not a "
        f'metrics record (a JSON object with an integer "step")\n'
    )


@pytest.mark.parametrize("name", ["", "."])
def test_atomic_write_refuses_an_empty_name_or_a_folder(tmp_path, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="file name is empty|is a folder; expected a file name"):
        atomic_write(name, lambda f: f.write(b"x"))
    assert list(tmp_path.iterdir()) == []
