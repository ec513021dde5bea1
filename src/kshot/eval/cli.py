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
from kshot.data.benchmarks import find_benchmark
from kshot.data.catalog import CATALOG, COOP11
from kshot.data.imagenet_variants import VARIANTS
from kshot.data.prepare import read_manifest
from kshot.data.coop_source import load_any
from kshot.config import parse_list
from kshot.errors import ConfigError, DataError
from kshot.eval.fewshot import FewShotInputs, FewShotProtocol, ResultStore, run_fewshot
from kshot.eval.dg import dg_inputs, per_target_records, run_dg
from kshot.eval.paper import paper_rows, write_tables
from kshot.eval.base2new import DEFAULT_METHODS as BASE2NEW_METHODS
from kshot.eval.base2new import markdown_table as base2new_table
from kshot.eval.report import plot_curves
from kshot.outputs import atomic_write_text
from kshot.methods.prompting.cli import run_base2new
from kshot.methods import METHODS
from kshot.features import FeatureStore
from kshot.features.cache import features_dir
from kshot.toyworld.export import export_world
from kshot.toyworld.generator import World

log = logging.getLogger(__name__)
console = Console(stderr=True)
app = typer.Typer(rich_markup_mode=None, help="The few-shot paper table over several datasets.")


def dataset_paths(datasets: str, root: Optional[Path], out: Path, dg: bool = False) -> list[Path]:
    """'toy' (the toy world, exported under OUT/data by `export_toy`), 'coop11' (ROOT/<folder> x 11) or comma-separated
    paths (bare names under ROOT); every folder but the toy one must exist (a DataError naming the missing ones).

    With `dg` the first is the source and the others the targets; an ImageNet folder alone stands for ImageNet and
    its four variants beside it (CoOp's domain-generalisation table)."""
    paths = []
    for d in parse_list(datasets, "--datasets", str):
        if d == "toy":
            paths.append(out / "data" / "toy")
        elif d == "coop11":
            if root is None:
                raise ConfigError("--datasets coop11 needs --root DATA (the folder `kshot data prepare` filled)")
            paths += [root / CATALOG[n].folder for n in COOP11]
        else:
            paths.append(root / d if root is not None and not Path(d).exists() else Path(d))
    alone = find_benchmark(paths[0].name) if dg and len(paths) == 1 else None
    if alone is not None and alone.name == "ImageNet":
        paths += [paths[0].parent / CATALOG[v].folder for v in VARIANTS]
    if dg and len(paths) < 2:
        raise ConfigError("--protocol dg needs a source and target datasets: --datasets SOURCE,TARGET[,...], or an "
                          "ImageNet folder alone (then its -V2/-Sketch/-A/-R folders beside it)")
    missing = [p for p in paths if p != out / "data" / "toy" and not p.is_dir()]
    if missing:
        hint = " (prepare them with `kshot data prepare NAME --root DATA`)" if root is not None else ""
        raise DataError(f"dataset folder(s) not found: {', '.join(map(str, missing))}{hint}")
    return paths


def export_toy(paths: list[Path], out: Path) -> None:
    """Export the toy world (8 train / 2 val / 4 test images per class) where `paths` asks for it, once."""
    target = out / "data" / "toy"
    if target in paths and not target.is_dir():
        export_world(World(), "imagefolder", target, n_train=8, n_val=2, n_test=4, seed=0)


@app.callback(invoke_without_command=True)
def bench(
    datasets: str = typer.Option(..., help="toy | coop11 | comma-separated dataset folders (names under --root)."),
    root: Optional[Path] = typer.Option(None, help="$DATA folder for coop11 and for bare dataset names."),
    protocol: str = typer.Option("fewshot", help="fewshot | base2new (CoOp's base-to-new: base / new / HM) | dg "
                                 "(domain generalisation: the first dataset's shots, scored on the others)."),
    method_names: Optional[str] = typer.Option(None, "--methods", help="Comma-separated method names (default "
                                               "tip_adapter,lpp; base2new: zeroshot,coop,atprompt)."),
    shots: Optional[str] = typer.Option(None, "--shots", "-k", help="Comma-separated K values (default 1,2,4,8,16; "
                                        "base2new, dg: 16)."),
    seeds: str = typer.Option("1,2,3", help="Comma-separated seeds."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="method.key=value override; repeat."),
    backbone: str = typer.Option("toy:clip", "--backbone", "-b", help="Backbone spec (as in `kshot eval`)."),
    out: Path = typer.Option(Path("kshot-out/bench"), "--out", "-o", help="Results folder (results.jsonl, tables)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Cache folder, as $KSHOT_CACHE (features in "
                                         "CACHE/features/)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... (default: CUDA when available)."),
) -> None:
    """Run methods x shots x seeds on every dataset and write table.md/.csv/.json/.tex with the published column
    (base2new: `table_base2new.md`, base / new / HM per dataset and their average; dg: `table_dg.*`, the source
    and every target, averaged over the targets).

    Every option (protocol, methods and their --set values, shots, seeds, dataset folders) is checked before any
    work starts.

    Example: kshot bench --datasets toy --methods tip_adapter,lpp --shots 1,4 --seeds 1
    """
    if protocol not in ("fewshot", "base2new", "dg"):
        raise ConfigError(f"unknown protocol {protocol!r}; available: fewshot, base2new, dg")
    methods = parse_list(method_names, "--methods", str) if method_names else (
        list(BASE2NEW_METHODS) if protocol == "base2new" else ["tip_adapter", "lpp"])
    sets = wf.method_overrides(overrides or [], methods)
    image_trained = [m for m in methods if "image" in METHODS.get(m).trains_encoders]
    if image_trained and protocol != "base2new":
        raise ConfigError(f"{', '.join(image_trained)} train(s) the image encoder on the shot images; --protocol "
                          f"{protocol} runs from cached features (use --protocol base2new, or `kshot fit`)")
    transductive = [m for m in methods if METHODS.get(m).transductive]
    if transductive and protocol == "dg":
        raise ConfigError(f"{', '.join(transductive)} adapt(s) to the test images; --protocol dg scores one fit on "
                          "several test sets: leave it out")
    ks = tuple(parse_list(shots or ("1,2,4,8,16" if protocol == "fewshot" else "16"), "--shots", int))
    seed_list = tuple(parse_list(seeds, "--seeds", int))
    paths = dataset_paths(datasets, root, out, dg=protocol == "dg")
    export_toy(paths, out)
    bb = load_backbone(backbone, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    proto = FewShotProtocol(methods, ks, seed_list, sets)
    if protocol == "base2new":
        _base2new(paths, bb, proto, out, features_dir(cache), device)
    else:
        fs, store = FeatureStore(features_dir(cache)), ResultStore(out / "results.jsonl")
        (_dg if protocol == "dg" else _fewshot)(paths, bb, proto, fs, store, out)


def _base2new(paths: list[Path], bb, proto: FewShotProtocol, out: Path, cache: Optional[Path],
              device: Optional[str]) -> None:
    """CoOp's base-to-new table over `paths`: table_base2new.md."""
    recs = []
    for path in paths:
        res = run_base2new(path, methods=proto.methods, backbone=bb, shots=proto.shots, seeds=proto.seeds,
                           overrides=proto.overrides, out=out, cache=cache, device=device, progress=console.print)
        recs += res["records"]
    table = base2new_table(recs)
    atomic_write_text(out / "table_base2new.md", table)
    Console().print(table)
    console.print(f"results in {out}: table_base2new.md")


def _dg(paths: list[Path], bb, proto: FewShotProtocol, fs: FeatureStore, store: ResultStore, out: Path) -> None:
    """Domain generalisation from paths[0] to paths[1:]: table_dg.md/.csv/.json/.tex and dg_curves.png, averaged over
    the targets."""
    inputs = dg_inputs(paths[0], paths[1:], bb, fs, proto)
    recs = run_dg(inputs, proto, store, progress=lambda s: console.print(f"{inputs.source}: {s}"))
    names = [t.name for t in inputs.targets]
    rows = paper_rows(per_target_records(recs), names, bb.spec, compare=False, average_of=names[1:])
    written = write_tables(rows, names, out, stem="table_dg")
    plot_curves(recs, out / "dg_curves.png", f"{inputs.source} → {', '.join(names[1:])} — {bb.spec}",
                metric=lambda r: sum(r["targets"][n] for n in names[1:]) / len(names[1:]),
                ylabel="top-1 averaged over the targets (%)")
    Console().print((out / "table_dg.md").read_text())
    console.print(f"results in {out}: {', '.join(p.name for p in written)} (average: over the targets)")


def _fewshot(paths: list[Path], bb, proto: FewShotProtocol, fs: FeatureStore, store: ResultStore, out: Path) -> None:
    """The few-shot protocol on every dataset: table.md/.csv/.json/.tex (+ the published column), curves."""
    names, records = [], []
    for path in paths:
        pool, test = load_any(path, split="train"), load_any(path, split="test")
        wf.preflight(proto.methods, proto.overrides, pool.classnames, bb)  # every method, before any work
        drawn = wf.drawn_indices(pool.labels, proto.shots, proto.seeds)  # encode only these (not ImageNet's 1.28 M)
        shots_fs = wf.pool_features(fs, bb, pool, drawn, name=f"{pool.name} (drawn shots)")
        if shots_fs.skipped:
            raise DataError(f"{path}: drawn images do not decode: {', '.join(p for p, _ in shots_fs.skipped[:5])} "
                            "(see `kshot data check`)")
        test_fs = wf.test_features(fs, bb, test, pool.classnames, model=f"the training pool {path}")
        inputs = FewShotInputs(pool.name, bb.spec, shots_fs, test_fs, pool.classnames,
                               wf.text_weights_for(bb, pool, wf.prompt_spec_for(pool)), bb.logit_scale, encoder=bb,
                               drawn=drawn, pool_labels=pool.labels)
        recs = run_fewshot(inputs, proto, store, progress=lambda s, n=pool.name: console.print(f"{n}: {s}"))
        plot_curves(recs, out / f"{pool.name}_curves.png", f"{pool.name} — {bb.spec}")
        names.append(pool.name)
        records += recs
    seeded = [n for n, p in zip(names, paths) if ((read_manifest(p) or {}).get("split") or {}).get("coop") is False]
    notes = [f"seeded split, not CoOp's (not comparable to published numbers): {', '.join(seeded)}"] if seeded else []
    rows = paper_rows(records, names, bb.spec, compare=sorted(names) == sorted(COOP11) and not seeded)
    written = write_tables(rows, names, out, notes=notes)
    Console().print((out / "table.md").read_text())
    console.print(f"results in {out}: {', '.join(p.name for p in written)}")
