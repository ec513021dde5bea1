"""`kshot bench`: the few-shot protocol over several datasets, one resumable `results.jsonl`, one paper table.

Thin over `kshot.eval.fewshot.run_fewshot` (features cached once per dataset and backbone, every finished cell
appended to the store, so a re-run skips what is done) and `kshot.eval.paper` (the tables).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console

from kshot import experiment as wf
from kshot.backbones import load_backbone
from kshot.data.catalog import CATALOG, COOP11
from kshot.data.coop_source import load_any
from kshot.errors import ConfigError
from kshot.eval.fewshot import FewShotInputs, FewShotProtocol, ResultStore, run_fewshot
from kshot.eval.paper import paper_rows, write_tables
from kshot.eval.base2new import DEFAULT_METHODS as BASE2NEW_METHODS
from kshot.eval.base2new import markdown_table as base2new_table
from kshot.eval.report import plot_curves
from kshot.outputs import atomic_write_text
from kshot.methods.prompting.cli import run_base2new
from kshot.features import FeatureStore, default_cache_dir
from kshot.toyworld.export import export_world
from kshot.toyworld.generator import World

log = logging.getLogger(__name__)
console = Console(stderr=True)
app = typer.Typer(help="The few-shot paper table over several datasets.")


def dataset_paths(datasets: str, root: Optional[Path], out: Path) -> list[Path]:
    """'toy' (the toy world, exported under OUT/data once), 'coop11' (ROOT/<folder> x 11) or comma-separated paths."""
    paths = []
    for d in (x.strip() for x in datasets.split(",") if x.strip()):
        if d == "toy":
            target = out / "data" / "toy"
            if not target.is_dir():
                export_world(World(), "imagefolder", target, n_train=8, n_val=2, n_test=4, seed=0)
            paths.append(target)
        elif d == "coop11":
            if root is None:
                raise ConfigError("--datasets coop11 needs --root DATA (the folder `kshot data prepare` filled)")
            paths += [root / CATALOG[n].folder for n in COOP11]
        else:
            paths.append(root / d if root is not None and not Path(d).exists() else Path(d))
    if not paths:
        raise ConfigError("--datasets is empty")
    return paths


@app.callback(invoke_without_command=True)
def bench(
    datasets: str = typer.Option(..., help="toy | coop11 | comma-separated dataset folders (names under --root)."),
    root: Optional[Path] = typer.Option(None, help="$DATA folder for coop11 and for bare dataset names."),
    protocol: str = typer.Option("fewshot", help="fewshot | base2new (CoOp's base-to-new: base / new / HM)."),
    method_names: Optional[str] = typer.Option(None, "--methods", help="Comma-separated method names (default "
                                               "tip_adapter,lpp; base2new: zeroshot,coop,atprompt)."),
    shots: Optional[str] = typer.Option(None, help="Comma-separated K values (default 1,2,4,8,16; base2new: 16)."),
    seeds: str = typer.Option("1,2,3", help="Comma-separated seeds."),
    backbone: str = typer.Option("toy:clip", "--backbone", "-b", help="Backbone spec (as in `kshot eval`)."),
    out: Path = typer.Option(Path("kshot-out/bench"), "--out", "-o", help="Results folder (results.jsonl, tables)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Feature cache folder (default $KSHOT_CACHE)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... (default: CUDA when available)."),
) -> None:
    """Run methods x shots x seeds on every dataset and write table.md/.csv/.json/.tex with the published column
    (base2new: `table_base2new.md`, base / new / HM per dataset and their average)."""
    if protocol not in ("fewshot", "base2new"):
        raise ConfigError(f"unknown protocol {protocol!r}; available: fewshot, base2new")
    methods = [m.strip() for m in method_names.split(",")] if method_names else (
        list(BASE2NEW_METHODS) if protocol == "base2new" else ["tip_adapter", "lpp"])
    ks = tuple(int(k) for k in (shots or ("16" if protocol == "base2new" else "1,2,4,8,16")).split(","))
    seed_list = tuple(int(s) for s in seeds.split(","))
    paths = dataset_paths(datasets, root, out)
    bb = load_backbone(backbone, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if protocol == "base2new":
        recs = []
        for path in paths:
            res = run_base2new(path, methods=methods, backbone=bb, shots=ks, seeds=seed_list, out=out, cache=cache,
                               device=device, progress=console.print)
            recs += res["records"]
        table = base2new_table(recs)
        atomic_write_text(out / "table_base2new.md", table)
        Console().print(table)
        console.print(f"results in {out}: table_base2new.md")
        return
    proto = FewShotProtocol(methods, ks, seed_list)
    fs = FeatureStore(cache or default_cache_dir())
    store = ResultStore(out / "results.jsonl")
    names, records = [], []
    for path in paths:
        pool, test = load_any(path, split="train"), load_any(path, split="test")
        spec = wf.prompt_spec_for(pool)
        inputs = FewShotInputs(pool.name, bb.spec, fs.get(bb, pool, name="pool"), fs.get(bb, test, name="test"),
                               pool.classnames, wf.text_weights_for(bb, pool, spec), bb.logit_scale)
        recs = run_fewshot(inputs, proto, store, progress=lambda s, n=pool.name: console.print(f"{n}: {s}"))
        plot_curves(recs, out / f"{pool.name}_curves.png", f"{pool.name} — {bb.spec}")
        names.append(pool.name)
        records += recs
    rows = paper_rows(records, names, bb.spec, compare=sorted(names) == sorted(COOP11))
    written = write_tables(rows, names, out)
    Console().print((out / "table.md").read_text())
    console.print(f"results in {out}: {', '.join(p.name for p in written)}")
