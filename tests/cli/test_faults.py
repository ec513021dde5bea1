"""kill -9 at seeded points of `fit` (a trained method), an `eval` sweep, `challenge run` and `continual run`, then a
rerun: it resumes or restarts cleanly, its final outputs are bit-identical to an uninterrupted run with the same seed,
and no temporary file is left behind.

The commands run in forked children of the test process (the real `kshot` entry point, `run_cli`, killed with
SIGKILL), so no child pays Python's and torch's start-up again; toy world, tiny settings.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path

import pytest

from kshot.cli import app
from kshot.cli_errors import run_cli

REPO = Path(__file__).resolve().parents[2]
CTX = mp.get_context("fork")
KILLS = 2  # seeded kill points per command
TIMED = ("_s", "seconds", "_mb", "created")  # wall-clock and memory fields: the only ones allowed to differ


def _child(argv: list[str]) -> None:
    os._exit(run_cli(app, argv))


def run(argv: list[str]) -> tuple[int, float]:
    """Run `kshot argv` in a forked child to the end: (exit status, seconds)."""
    t0 = time.perf_counter()
    p = CTX.Process(target=_child, args=(argv,))
    p.start()
    p.join()
    return p.exitcode, time.perf_counter() - t0


def kill_after(argv: list[str], seconds: float) -> bool:
    """Start `kshot argv`, SIGKILL it after `seconds`; True if it was killed (False: it had finished)."""
    p = CTX.Process(target=_child, args=(argv,))
    p.start()
    p.join(seconds)
    alive = p.is_alive()
    if alive:
        os.kill(p.pid, signal.SIGKILL)
    p.join()  # reaped: the pid is dead for the rerun's stale-folder check
    return alive


def files(folder: Path, skip: tuple[str, ...] = (), run: Path | None = None) -> dict[str, bytes]:
    """Relative path -> bytes of the files under `folder` (JSON files with their timing fields removed, and the
    run's own folder `run` named '<run>')."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if not p.is_file() or any(rel.endswith(s) for s in skip):
            continue
        data = p.read_bytes()
        if run is not None:
            data = data.replace(str(run).encode(), b"<run>")
        if p.suffix == ".json":
            data = json.dumps(_untimed(json.loads(data)), sort_keys=True).encode()
        elif p.suffix == ".jsonl":
            data = b"\n".join(json.dumps(_untimed(json.loads(line)), sort_keys=True).encode()
                              for line in data.splitlines() if line.strip())
        out[rel] = data
    return out


def _untimed(x):
    if isinstance(x, dict):
        return {k: _untimed(v) for k, v in x.items() if not k.endswith(TIMED)}
    if isinstance(x, list):
        return [_untimed(v) for v in x]
    return x


def temporaries(*folders: Path) -> list[str]:
    """Temporary files, part files and staging folders anywhere under `folders`."""
    bad = []
    for folder in folders:
        for p in folder.rglob("*"):
            n = p.name
            if ".tmp" in n or ".staging-" in n or ".old-" in n or n.startswith("part-") or n.endswith(".part"):
                bad.append(str(p))
    return sorted(bad)


def check_kill_and_rerun(tmp_path: Path, name: str, argv_for, out_of, skip: tuple[str, ...] = (),
                         rerun_extra: tuple[str, ...] = ()) -> None:
    """Reference run, then KILLS seeded kill points each followed by a rerun, compared with the reference.

    Args:
        argv_for: (output folder, cache folder) -> argv.
        out_of: output folder -> the folder whose files are compared.
        rerun_extra: options of the rerun (`--overwrite` for commands that refuse to replace a finished run: a kill
            after the swap, while the command prints its summary, leaves a finished run).
    """
    ref_out, ref_cache = tmp_path / "ref" / name, tmp_path / "ref" / "cache"
    status, t_ref = run(argv_for(ref_out, ref_cache))
    assert status == 0, f"reference {name} failed"
    ref = files(out_of(ref_out), skip, ref_out)
    rng = random.Random(f"kill-{name}")
    killed = 0
    for i in range(KILLS):
        out, cache = tmp_path / f"k{i}" / name, tmp_path / f"k{i}" / "cache"
        at = rng.uniform(0.2, 0.85) * t_ref
        if kill_after(argv_for(out, cache), at):
            killed += 1
            status, _ = run([*argv_for(out, cache), *rerun_extra])
            assert status == 0, f"{name}: rerun after kill -9 at {at:.2f} s failed"
        got = files(out_of(out), skip, out)
        assert got.keys() == ref.keys(), f"{name} killed at {at:.2f} s"
        diff = [k for k in ref if got[k] != ref[k]]
        assert not diff, f"{name} killed at {at:.2f} s: files differ from the uninterrupted run: {diff}"
        assert temporaries(tmp_path / f"k{i}") == [], f"{name} killed at {at:.2f} s"
    assert killed >= 1, f"{name}: every run finished before its kill point (reference {t_ref:.2f} s)"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    from kshot.toyworld.export import export_world
    from kshot.toyworld.generator import World

    root = tmp_path_factory.mktemp("faults")
    w = export_world(World(), "imagefolder", root / "w", domains=["Creatures"], n_train=3, n_val=1, n_test=1)
    ch = export_world(World(), "challenge", root / "ch", domains=["Creatures"], n_train=5, n_val=1, n_test=1)
    return {"W": w, "CH": ch}


def test_fit_of_a_trained_method_killed_then_rerun(world, tmp_path):
    def argv(out: Path, cache: Path) -> list[str]:
        return ["-q", "fit", str(world["W"]), "-m", "tip_adapter_f", "-k", "2", "--seed", "3", "-o", str(out),
                "--cache", str(cache), "--device", "cpu", "--set", "epochs=6"]

    check_kill_and_rerun(tmp_path, "art", argv, lambda out: out, rerun_extra=("--overwrite",))


def test_eval_sweep_killed_then_resumed(world, tmp_path):
    def argv(out: Path, cache: Path) -> list[str]:
        return ["-q", "eval", str(world["W"]), "--methods", "tip_adapter_f,linear_probe", "--shots", "1",
                "--seeds", "1,2,3", "-o", str(out), "--cache", str(cache), "--device", "cpu",
                "--set", "tip_adapter_f.epochs=4"]

    check_kill_and_rerun(tmp_path, "eval", argv, lambda out: out)


def test_challenge_run_killed_then_rerun(world, tmp_path):
    def argv(out: Path, cache: Path) -> list[str]:
        return ["challenge", "run", str(world["CH"]), "-c", "baseline_zeroshot", "--set", "backbones.vit=toy:clip",
                "-o", str(out), "--cache", str(cache), "--device", "cpu", "--workers", "0"]

    check_kill_and_rerun(tmp_path, "run", argv, lambda out: out, skip=("report.md",), rerun_extra=("--overwrite",))


def test_continual_run_killed_then_resumed(tmp_path):
    small = ["schedule.train.epochs=1", "schedule.retrain.epochs=1", "eval_every_epoch=false",
             *[f"tasks.{t}.limit=60" for t in ("digits0-3", "digits4-6", "digits7-9")]]

    def argv(out: Path, cache: Path) -> list[str]:
        return ["continual", "run", str(REPO / "configs" / "continual" / "digits.yaml"), "-o", str(out),
                "-m", "packnet", "--quiet", *[a for s in small for a in ("--set", s)]]

    check_kill_and_rerun(tmp_path, "cont", argv, lambda out: out / "packnet",
                         skip=("log.txt", "log.jsonl", "report.md"))
