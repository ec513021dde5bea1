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


# ------------------------------------------------------------------------------ read-only folders and a full disk
# The failing command runs in a forked child (the real entry point, `run_cli`) that drops root (root writes into a
# read-only folder anyway) or lowers RLIMIT_FSIZE; its output comes back through a pipe (no file-size limit there).
# The same command ran in this process first, so every module the child needs is already imported.

NOBODY = 65534


def run_limited(argv: list[str], *, fsize: int | None = None, read_only: bool = False) -> tuple[int, str]:
    """(exit status, stdout + stderr) of `kshot argv` in a child with a file-size limit or without root."""
    import multiprocessing as mp
    import resource
    import threading

    r, w = os.pipe()

    def child() -> None:
        os.dup2(w, 1)
        os.dup2(w, 2)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if read_only and os.geteuid() == 0:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        os._exit(run_cli(app, argv))

    p = mp.get_context("fork").Process(target=child)
    p.start()
    os.close(w)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(r, 65536), b"")))
    reader.start()
    p.join(300)
    reader.join(10)
    os.close(r)
    return p.exitcode, b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture
def shared(tmp_path_factory, places):
    """A folder the unprivileged child can read (pytest's own tmp folders are private to root)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="kshot-ro-"))
    os.chmod(d, 0o777)
    for name in ("W", "CH"):
        shutil.copytree(places[name], d / name)
    (d / "cache").mkdir()
    os.chmod(d / "cache", 0o777)
    yield d
    for p in [d, *d.rglob("*")]:
        if p.is_dir():
            os.chmod(p, 0o755)
    shutil.rmtree(d)


def _one_error_line(status: int, text: str, *words: str) -> None:
    assert status not in (0, None), text
    assert "Traceback" not in text and "error:" in text, text
    assert any(w in text for w in words), text


def _make_read_only(*folders: Path) -> None:
    for f in folders:
        for p in [f, *f.rglob("*")]:
            os.chmod(p, 0o555 if p.is_dir() else 0o444)


FIT = ["fit", "{W}", "-m", "tip_adapter", "-k", "1", "-o", "{OUT}", "--cache", "{CACHE}", "--device", "cpu"]


def _args(argv: list[str], **fill: Path) -> list[str]:
    return [a.format(**{k: str(v) for k, v in fill.items()}) for a in argv]


def test_fit_into_a_read_only_folder_and_a_full_disk(shared):
    parent = shared / "runs"
    parent.mkdir()
    art = parent / "art"
    fit = _args(FIT, W=shared / "W", OUT=art, CACHE=shared / "cache")
    assert run_cli(app, fit) == 0
    before = snapshot(art)
    status, text = run_limited([*fit, "--overwrite", "--seed", "2"], fsize=2048)  # state.safetensors is larger
    _one_error_line(status, text, "file too large")
    assert snapshot(art) == before and leftovers(parent) == []
    _make_read_only(parent)
    status, text = run_limited([*fit, "--overwrite", "--seed", "2"], read_only=True)
    _one_error_line(status, text, "read-only", "no write permission", "permission denied")
    assert snapshot(art) == before and leftovers(parent) == []


EVAL = ["eval", "{W}", "--methods", "tip_adapter", "--shots", "1", "--seeds", "{SEEDS}", "-o", "{OUT}",
        "--cache", "{CACHE}", "--device", "cpu"]


def test_eval_into_a_read_only_folder_and_a_full_disk(shared):
    out = shared / "eval"
    first = _args(EVAL, W=shared / "W", OUT=out, CACHE=shared / "cache", SEEDS="1")
    assert run_cli(app, first) == 0
    before = snapshot(out)
    more = _args(EVAL, W=shared / "W", OUT=out, CACHE=shared / "cache", SEEDS="1,2")
    size = (out / "results.jsonl").stat().st_size
    status, text = run_limited(more, fsize=size + 100)  # the second record does not fit
    _one_error_line(status, text, "file too large")
    assert "results.jsonl" in text
    assert snapshot(out) == before and leftovers(shared) == []
    _make_read_only(out)
    status, text = run_limited(more, read_only=True)
    _one_error_line(status, text, "read-only", "no write permission", "permission denied")
    assert snapshot(out) == before and leftovers(shared) == []


def test_extract_with_a_read_only_cache_and_a_full_disk(shared):
    ex = ["extract", str(shared / "W"), "--cache", str(shared / "cache"), "--workers", "0", "--device", "cpu"]
    assert run_cli(app, ex) == 0
    before = snapshot(shared / "cache")
    status, text = run_limited([*ex, "--split", "val"], fsize=1024)  # a new entry: its part file is larger
    _one_error_line(status, text, "file too large")
    assert leftovers(shared / "cache") == []
    assert {k: v for k, v in snapshot(shared / "cache").items() if k in before} == before
    _make_read_only(shared / "cache")
    kept = snapshot(shared / "cache")
    status, text = run_limited(ex, read_only=True)  # a finished entry is read from a read-only cache
    assert status == 0 and "reused" in text, text
    status, text = run_limited([*ex, "--split", "test"], read_only=True)
    _one_error_line(status, text, "read-only", "permission denied", "no write permission")
    assert snapshot(shared / "cache") == kept and leftovers(shared / "cache") == []


def test_two_fits_into_one_folder_at_once_leave_one_whole_run(places, tmp_path):
    import multiprocessing as mp

    art = tmp_path / "art"
    ctx = mp.get_context("fork")
    argv = [["-q", "fit", str(places["W"]), "-m", "tip_adapter", "-k", "1", "--seed", str(s), "-o", str(art),
             "--cache", str(places["CACHE"])] for s in (1, 2)]
    procs = [ctx.Process(target=lambda a=a: os._exit(run_cli(app, a))) for a in argv]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    codes = sorted(p.exitcode for p in procs)
    assert codes[0] == 0 and codes[1] in (0, 2), codes  # the later commit is refused (no --overwrite), or it lost
    # the race at the early check; either way one run's files, never a mix
    import json

    seed = json.loads((art / "task.json").read_text())["seed"]
    ref = tmp_path / f"ref{seed}"
    assert run_cli(app, ["fit", str(places["W"]), "-m", "tip_adapter", "-k", "1", "--seed", str(seed), "-o", str(ref),
                         "--cache", str(places["CACHE"])]) == 0
    assert snapshot(art) == snapshot(ref)
    assert leftovers(tmp_path) == []


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from kshot.outputs import remove_stale_temporaries, tmp_sibling

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    (tmp_path / "sub").mkdir()
    stale = tmp_path / "sub" / f".curves.png.{dead_pid}.tmp"
    stale.write_bytes(b"half")
    mine = tmp_sibling(tmp_path / "table.md")  # this (live) process's
    mine.write_text("writing")
    other = tmp_path / "notes.tmp"  # not a temporary sibling: never touched
    other.write_text("user file")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and mine.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path / "missing") == []
