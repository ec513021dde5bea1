"""kshot.outputs: atomic writes leave no temporary file; a staged run folder replaces a finished run only on success
(and only with --overwrite), for `kshot fit` and `kshot challenge run`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kshot.cli import app
from kshot.cli_errors import run_cli
from kshot.errors import KshotError
from kshot.outputs import RunFolder, atomic_write, atomic_write_text


def snapshot(folder: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under `folder` (hidden ones included)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    """Temporary files or staging folders anywhere under `parent`."""
    return sorted(str(p.relative_to(parent)) for p in parent.rglob("*")
                  if ".tmp" in p.name or ".staging-" in p.name or ".old-" in p.name)


# ---------------------------------------------------------------------------------------------------- helpers


def test_atomic_write_keeps_old_content_and_no_tmp_on_error(tmp_path):
    target = atomic_write_text(tmp_path / "a.txt", "old\n")

    def half(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, half)
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_run_folder_commit_replaces_and_failure_keeps(tmp_path):
    out = tmp_path / "run"
    with RunFolder(out) as stage:
        (stage / "task.json").write_text("1")
        assert not out.exists()  # nothing visible before the commit
    assert (out / "task.json").read_text() == "1"
    with pytest.raises(KshotError, match="--overwrite"):
        RunFolder(out).check()
    with pytest.raises(RuntimeError):
        with RunFolder(out, overwrite=True) as stage:
            (stage / "task.json").write_text("2")
            raise RuntimeError("the fit failed")
    assert (out / "task.json").read_text() == "1"
    with RunFolder(out, overwrite=True) as stage:
        (stage / "task.json").write_text("3")
    assert snapshot(out) == {"task.json": b"3"}
    assert leftovers(tmp_path) == []


def test_run_folder_refuses_a_foreign_folder_and_a_file(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(KshotError, match="not a run folder|holds no task.json"):
        RunFolder(tmp_path / "mine", overwrite=True).check()
    (tmp_path / "f").write_text("x")
    with pytest.raises(KshotError, match="not a folder"):
        RunFolder(tmp_path / "f").check()


def test_stale_staging_of_a_killed_process_is_removed_and_a_half_swap_restored(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    host = RunFolder(tmp_path / "run")._host
    out = tmp_path / "run"
    stale = tmp_path / f".run.staging-{host}-{pid}"
    (stale / "sub").mkdir(parents=True)
    old = tmp_path / f".run.old-{host}-{pid}"  # killed between `out -> old` and `stage -> out`
    old.mkdir()
    (old / "task.json").write_text("finished")
    removed = RunFolder(out).cleanup_stale()
    assert sorted(p.name for p in removed) == sorted([stale.name, old.name])
    assert (out / "task.json").read_text() == "finished"
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------- commands


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    from kshot.toyworld.export import export_world
    from kshot.toyworld.generator import World

    root = tmp_path_factory.mktemp("outputs")
    w = export_world(World(), "imagefolder", root / "world", domains=["Creatures"], n_train=2, n_val=1, n_test=1)
    ch = export_world(World(), "challenge", root / "chal", domains=["Creatures"], n_train=5, n_val=1, n_test=1)
    return {"W": w, "CH": ch, "CACHE": root / "cache"}


def _fit(places, out: Path, *extra: str) -> int:
    return run_cli(app, ["fit", str(places["W"]), "-m", "tip_adapter", "-k", "1", "-o", str(out),
                         "--cache", str(places["CACHE"]), *extra])


def test_fit_refuses_a_finished_run_and_a_failed_fit_leaves_it_intact(places, tmp_path, capsys):
    art = tmp_path / "art"
    assert _fit(places, art) == 0
    before = snapshot(art)
    capsys.readouterr()
    assert _fit(places, art, "--seed", "2") == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err
    assert _fit(places, art, "--overwrite", "-b", str(tmp_path / "missing" / "ViT-B-32.pt")) != 0  # fails late
    assert snapshot(art) == before
    assert _fit(places, art, "--overwrite", "--seed", "2") == 0
    after = snapshot(art)
    assert after.keys() == before.keys() and after["shots.txt"] != before["shots.txt"]
    assert leftovers(tmp_path) == []


def _challenge(places, out: Path, *extra: str) -> int:
    return run_cli(app, ["challenge", "run", str(places["CH"]), "-c", "baseline_zeroshot", "-o", str(out), "--device",
                         "cpu", "--cache", str(places["CACHE"]), "--set", "backbones.vit=toy:clip", *extra])


def test_challenge_run_overwrite_and_refused_run_keep_the_finished_one(places, tmp_path, capsys):
    run = tmp_path / "run"
    assert _challenge(places, run) == 0, capsys.readouterr().err
    before = snapshot(run)
    assert {"result.txt", "result.zip", "report.json", "config.yaml", "shots.txt"} <= before.keys()
    assert _challenge(places, run, "--set", "seed=2") == 2
    assert "--overwrite" in capsys.readouterr().err
    # a refused run (degenerate predictions: every test image gets the same top-1) writes its report aside
    assert _challenge(places, run, "--overwrite", "--set", "degenerate_top5_share=0.0") == 2
    err = capsys.readouterr().err
    assert "refusing" in err and "run.refused" in err
    assert snapshot(run) == before
    assert (tmp_path / "run.refused" / "report.json").is_file()
    assert not (tmp_path / "run.refused" / "result.txt").exists()
    assert _challenge(places, run, "--overwrite", "--set", "seed=2") == 0
    assert snapshot(run)["shots.txt"] != before["shots.txt"]
    assert leftovers(tmp_path) == []
