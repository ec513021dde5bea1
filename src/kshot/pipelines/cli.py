"""`kshot challenge`: run a Jittor-challenge pipeline on a challenge root and write result.txt (thin over
`kshot.pipelines.runner.run_challenge`).

Mount with `app.add_typer(kshot.pipelines.cli.app, name="challenge")`, giving `kshot challenge run|configs|show`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from kshot.devices import device_option

app = typer.Typer(rich_markup_mode=None, add_completion=False, no_args_is_help=True,
                  help="The Jittor challenge (track 1) systems end to end: 4 shots per class -> result.txt.")
console = Console(stderr=True)


@app.command("run")
def challenge(
    root: Path = typer.Argument(..., help="Challenge root: train.txt, classes.txt / classes_b.txt, TrainSet/, "
                                          "TestSetA/ or TestSetB/."),
    config: str = typer.Option("seed004_clip_b", "--config", "-c",
                               help="Pipeline: a shipped name (`kshot challenge configs`) or a YAML/TOML file."),
    out: Path = typer.Option(Path("kshot-out/challenge"), "--out", "-o", help="Output folder."),
    split: str = typer.Option("test", help="Test split: testA | testB | test (the only test folder present)."),
    classes: str | None = typer.Option(None, help="Class file (default classes.txt for testA, classes_b.txt "
                                                     "otherwise)."),
    test_dir: Path | None = typer.Option(None, help="Test image folder (default root/TestSetA or TestSetB)."),
    shots_file: Path | None = typer.Option(None, help="Use this shots file (train.txt format) if it exists, "
                                                         "else write the pick there."),
    set_: list[str] = typer.Option([], "--set", help="Config override key.path=value, e.g. "
                                                     "stages.dog.epochs=10 or backbones.vit=/w/ViT-B-32.pkl."),
    tune_on_pool: bool = typer.Option(False, help="Let methods tune on unused pool images (OUTSIDE the 4-shot "
                                                  "rule; the report says so)."),
    force: bool = typer.Option(False, help="Write result.txt even when the predictions look degenerate."),
    test_labels: Path | None = typer.Option(None, help="Hidden test labels (`<path> <label>`, e.g. the toy "
                                                          "replica's test_labels.txt) to score the test folder."),
    cache: Path | None = typer.Option(None, help="Cache folder, as $KSHOT_CACHE (features in CACHE/features/)."),
    device: str | None = typer.Option(None, callback=device_option,
                                     help="cpu, cuda, cuda:1 ... (default: CUDA when available)."),
    batch_size: int = typer.Option(256, help="Images per forward pass when extracting features."),
    workers: int | None = typer.Option(None, help="Image decoding workers (default: automatic)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log each stage."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the finished run in --out (kept until the new "
                                   "run has succeeded)."),
) -> None:
    """Pick 4 shots per class, extract features once per backbone, run the pipeline, write result.txt + report.

    Example: kshot challenge run toy/ --config toy_cascade -o kshot-out/challenge
    """
    from kshot.pipelines.configfile import load_config
    from kshot.pipelines.params import human
    from kshot.features.cache import features_dir
    from kshot.pipelines.runner import RunOptions, run_challenge

    if verbose:
        logging.getLogger("kshot").setLevel(logging.INFO)
    cfg = load_config(config, set_)
    opts = RunOptions(out=out, split=split, classes_file=classes, test_dir=test_dir, shots_file=shots_file,
                      test_labels=test_labels, tune_on_pool=tune_on_pool, force=force, cache_dir=features_dir(cache),
                      device=device, batch_size=batch_size, workers=workers, progress=True, overwrite=overwrite)
    res = run_challenge(cfg, root, opts)
    rep = res.report
    console.print(stage_table(rep, "estimate", f"{cfg.name}: estimated accuracy (unused pool images; an estimate)"))
    if any((s.get("metrics") or {}).get("test") for s in rep["stages"]):
        console.print(stage_table(rep, "test", f"{cfg.name}: test accuracy (scored with --test-labels)"))
    p = rep["parameters"]
    console.print(f"parameters: {human(p['loaded_total'])} loaded, {human(p['by_use_total'])} by use")
    if not rep["rule"]["compliant"]:
        console.print(f"[yellow]outside the challenge rule:[/] {rep['rule']['detail']}")
    if rep.get("forced"):
        console.print(f"[yellow]written despite degenerate predictions:[/] {rep['refused']}")
    console.print(f"wrote {res.result_txt} (+ .zip) for {len(res.filenames)} test images; report {res.report_path}")


def stage_table(report: dict, key: str, title: str) -> Table:
    """The per-stage metrics `key` ('estimate' or 'test') of a run report as a table (percent)."""
    table = Table(title=title)
    for col in ("stage", "n", "top-1 %", "top-5 %", "fit s"):
        table.add_column(col)
    for s in report["stages"]:
        m = (s.get("metrics") or {}).get(key)
        if m:
            table.add_row(s["name"], str(m["n"]), f"{100 * m['top1']:.2f}",
                          "–" if m.get("top5") is None else f"{100 * m['top5']:.2f}", f"{s.get('fit_s', 0):.1f}")
    return table


@app.command("configs")
def configs() -> None:
    """List the shipped pipeline configs.

    Example: kshot challenge configs
    """
    from kshot.pipelines.configfile import load_config, shipped_configs

    table = Table(title="shipped pipelines (configs/pipelines)")
    for col in ("name", "stages", "description"):
        table.add_column(col)
    for path in shipped_configs():
        cfg = load_config(path)
        table.add_row(path.stem, ", ".join(f"{n}" for n in cfg.stages), cfg.description)
    Console().print(table)


@app.command("show")
def show(
    config: str = typer.Argument(..., help="A shipped name or a YAML/TOML file."),
    set_: list[str] = typer.Option([], "--set", help="Config override key.path=value."),
) -> None:
    """Print a pipeline config as resolved (defaults filled in, overrides applied).

    Example: kshot challenge show toy_cascade
    """
    import yaml

    from kshot.pipelines.configfile import config_to_dict, load_config

    cfg = load_config(config, set_)
    typer.echo(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))
