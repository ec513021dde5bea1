"""`kshot continual run|eval|report`: thin commands over `kshot.continual` (mounted by the main CLI)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List, Optional

import typer

from kshot.devices import device_option

app = typer.Typer(rich_markup_mode=None, help="PackNet and continual baselines over a task sequence.",
                  no_args_is_help=True,
                  add_completion=False)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("kshot.continual").setLevel(logging.INFO if verbose else logging.WARNING)


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def run(
    config: Path = typer.Argument(..., help="YAML run config (see configs/continual/)."),
    out: Path = typer.Option(Path("kshot-out/continual"), "--out", "-o",
                             help="Output folder (one sub-folder per method)."),
    method: Optional[List[str]] = typer.Option(None, "--method", "-m",
                                               help="Run only these methods (repeatable): packnet, finetune, frozen, "
                                                    "individual. Default: the config's `methods`."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Config override key.path=value (repeatable)."),
    restart: bool = typer.Option(False, "--restart", help="Ignore existing checkpoints and start over."),
    force: bool = typer.Option(False, "--force", help="Resume even though the config changed since the checkpoint."),
    device: Optional[str] = typer.Option(None, "--device", callback=device_option,
                                          help="cpu, cuda, cuda:1 (default: the config's)."),
    verbose: bool = typer.Option(True, "--verbose/--quiet", help="Log every epoch to the console."),
) -> None:
    """Train the methods over the sequence (resuming from the last finished phase), then write the report.

    Example: kshot continual run configs/continual/digits.yaml -o kshot-out/continual
    """
    from kshot.errors import KshotError
    from kshot.outputs import remove_stale_temporaries

    from .config import load_config
    from .report import write_report
    from .sequence import run as run_sequence

    _setup_logging(verbose)
    sets = list(overrides or []) + ([f"device={device}"] if device else [])
    try:
        cfg = load_config(config, sets)
        remove_stale_temporaries(out)  # half-written files of a killed run (it resumes in place)
        states = run_sequence(cfg, out, methods=method or None, resume=not restart, force=force)
        report = write_report(out)
    except KshotError as e:
        _fail(e)
        return
    for m, st in states.items():
        s = st.summary()
        typer.echo(f"{m:10s} average accuracy {s['average_accuracy']:6.2f} %  BWT {s['bwt']:7.2f}  "
                   f"forgetting {s['forgetting']:6.2f}")
    typer.echo(f"report: {report}")


@app.command("eval")
def eval_(
    checkpoint: Path = typer.Argument(..., help="A method's run folder or its checkpoint.json/.safetensors."),
    task: Optional[List[str]] = typer.Option(None, "--task", "-t", help="Task(s) to evaluate (default: all trained)."),
    test_dir: Optional[Path] = typer.Option(None, "--test-dir", help="Other test folder (with a single --task)."),
    device: str = typer.Option("cpu", "--device", callback=device_option),
    batch_size: int = typer.Option(128, "--batch-size"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the rows as JSON to this file."),
) -> None:
    """Evaluate a checkpoint on finished tasks; reads only those tasks' test splits.

    Example: kshot continual eval kshot-out/continual/packnet --json eval.json
    """
    from kshot.errors import KshotError

    from .checkpoint import read_meta
    from .sequence import evaluate_checkpoint

    _setup_logging(False)
    try:
        meta = read_meta(checkpoint)
        tasks = task or list(meta["learner"]["tasks"])
        if test_dir is not None and len(tasks) != 1:
            raise KshotError("--test-dir needs exactly one --task")
        rows = [evaluate_checkpoint(checkpoint, t, test_dir=str(test_dir) if test_dir else None, device=device,
                                    batch_size=batch_size) for t in tasks]
    except KshotError as e:
        _fail(e)
        return
    for r in rows:
        typer.echo(f"{r['method']} {r['task']}: {r['accuracy']:.2f} % on {r['images']} images "
                   f"(logits {r['digest']})")
    if json_out is not None:
        from kshot.data.paths import atomic_write_text

        atomic_write_text(json_out, json.dumps(rows, indent=1))


@app.command()
def report(out: Path = typer.Argument(..., help="The --out folder of `run`.")) -> None:
    """Rebuild report.md and the plots from a run folder (no model is run).

    Example: kshot continual report kshot-out/continual
    """
    from kshot.errors import KshotError

    from .report import write_report

    try:
        typer.echo(f"report: {write_report(out)}")
    except KshotError as e:
        _fail(e)


if __name__ == "__main__":
    app()
