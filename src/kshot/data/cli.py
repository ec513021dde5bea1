"""`kshot data list | prepare | check`: the CoOp benchmark datasets, built from their official archives and checked."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kshot.data.catalog import CATALOG, COOP11, get_entry
from kshot.data.check import check_dataset
from kshot.data.prepare import prepare_dataset
from kshot.errors import DataError

app = typer.Typer(rich_markup_mode=None,
                  help="The 11 CoOp benchmark datasets (+ ImageNet variants): list, prepare, check.",
                  no_args_is_help=True)
console = Console(soft_wrap=True)  # paths and messages stay on one line (greppable, testable)

RootOpt = typer.Option(..., "--root", help="The $DATA folder holding one sub-folder per dataset.")


def _names(name: str) -> list[str]:
    if name.lower() == "coop11":
        return list(COOP11)
    return [get_entry(n.strip()).name for n in name.split(",") if n.strip()]


@app.command("list")
def list_() -> None:
    """The datasets, the files each needs (official names, sizes), licence, and whether kshot can download them.

    Example: kshot data list
    """
    table = Table(title="CoOp benchmark datasets (folder under $DATA; train / val / test as CoOp published)")
    for col in ("name", "folder", "classes", "train / val / test", "files", "download", "licence"):
        table.add_column(col)
    for e in CATALOG.values():
        counts = " / ".join(f"{c:,}" if c else "-" for c in e.counts)
        files = "\n".join(f"{a.filename} ({a.size}{'' if a.required else ', optional'})" for a in e.archives)
        if e.split_file:
            files += f"\n{e.split_file} (CoOp's split; optional)"
        table.add_row(e.name + (" (variant)" if e.variant else ""), e.folder, str(e.classes), counts, files,
                      "yes" if e.downloadable else "no", e.licence)
    console.print(table)
    for e in CATALOG.values():
        if e.note:
            console.print(f"{e.name}: {e.note}")


@app.command()
def prepare(
    name: str = typer.Argument(..., help="Dataset name or alias (see `kshot data list`), a comma list, or coop11."),
    root: Path = RootOpt,
    source: Optional[Path] = typer.Option(None, "--from", help="Folder holding the official archives (default: "
                                          "download those torchvision can fetch)."),
    split_file: Optional[Path] = typer.Option(None, help="A split_zhou_<Name>.json to use (default: the one in "
                                              "--from, else a seeded split marked as not CoOp's)."),
    seed: int = typer.Option(1, help="Seed of the generated split when no split file is at hand."),
    mirror: Optional[str] = typer.Option(None, help="Base URL of a mirror replacing the official download hosts."),
) -> None:
    """Build CoOp's layout under ROOT/<folder> from the official archives (resumable; the folder appears complete).

    Example: kshot data prepare pets --root DATA
    """
    names = _names(name)
    if split_file is not None and len(names) > 1:
        raise DataError("--split-file needs a single dataset name")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    for n in names:
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(f"{n}: unpacking", total=None)

            def progress(archive: str, done: int, total: int) -> None:
                bar.update(task, description=f"{n}: {archive}", completed=done, total=total or None)

            res = prepare_dataset(n, root, source, split_file=split_file, seed=seed, mirror=mirror,
                                  progress=progress)
        counts = ", ".join(f"{k} {v:,}" for k, v in res.manifest["counts"].items())
        split = res.manifest["split"]
        label = "" if split.get("coop", True) else " [yellow](seeded split, NOT CoOp's)[/]"
        console.print(f"{n}: {'already prepared' if res.existed else 'prepared'} in {res.path} "
                      f"({res.manifest['classes']} classes; {counts}){label}")


@app.command()
def check(
    name: str = typer.Argument(..., help="Dataset name or alias, a comma list, or coop11."),
    root: Path = RootOpt,
    fast: bool = typer.Option(False, "--fast", help="Skip decoding every image (counts and overlaps only)."),
) -> None:
    """Compare a prepared dataset with CoOp's published counts; find missing, unreadable and overlapping images.

    Example: kshot data check coop11 --root DATA
    """
    failed = []
    for n in _names(name):
        with Progress(TextColumn(f"{n}: decoding"), BarColumn(), MofNCompleteColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task("", total=None)
            report = check_dataset(n, root, decode=not fast,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total))
        table = Table(title=f"{report.name} ({report.folder}; split: {report.split_source})")
        for col in ("split", "images", "expected", "classes"):
            table.add_column(col)
        for r in report.rows:
            table.add_row(r.split, f"{r.images:,}", "-" if r.expected is None else f"{r.expected:,}", str(r.classes))
        console.print(table)
        for w in report.warnings:
            console.print(f"[yellow]warning:[/] {w}")
        for p in report.problems:
            console.print(f"[red]problem:[/] {p}")
        if not report.ok:
            failed.append(n)
    if failed:
        raise DataError(f"check failed for {', '.join(failed)} (problems above)")
    console.print("[green]ok[/]")
