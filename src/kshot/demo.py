"""`kshot demo`: the whole toolkit on the shipped toy world and tiny CLIP, offline, in a few minutes on a CPU.

Steps: export the toy world to disk in the challenge layout (reused when present) -> load `toy:clip` -> cached
features of the training pool and the labelled test images -> zero-shot and every cached-feature method at
1/2/4/8/16 shots (one seed) through the protocol runner -> a report folder: Markdown table (overall and the
opaque-name domain, where zero-shot is weak), few-shot curves, a confusion plot and a `result.txt` for the
challenge-layout replica (all classes, including those without training images).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console

from kshot.data.dataset import Dataset, Item
from kshot.eval.fewshot import (
    FewShotInputs,
    FewShotProtocol,
    ResultStore,
    cached_feature_methods,
    run_cell,
    run_fewshot,
)
from kshot.eval.metrics import confusion_matrix, topk_ids
from kshot.eval.report import markdown_table, plot_confusion, plot_curves
from kshot.features import FeatureStore, default_cache_dir
from kshot.features.extract import ExtractConfig

DEMO_SHOTS = (1, 2, 4, 8, 16)
OPAQUE_DOMAIN = "Creatures"
SUBMISSION_METHOD = "tip_adapter"


def _world_root(cache: Path | None) -> Path:
    base = Path(cache) if cache else default_cache_dir().parent
    return base / "toyworld" / "demo-v1"


DEMO_IMAGES = {"n_train": 24, "n_val": 8, "n_test": 25}  # per class; the pool holds train + val (32 per class)


def ensure_demo_world(root: Path) -> Path:
    """Export the default toy world in the challenge layout to `root` unless a complete export is there.

    The export goes to a temporary sibling folder renamed into place at the end, so an interrupted export is never
    mistaken for a complete one.
    """
    import shutil

    from kshot.toyworld.export import export_world
    from kshot.toyworld.generator import World

    root = Path(root)
    if (root / "test_labels.txt").is_file():
        return root
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    export_world(World(), "challenge", tmp, seed=0, **DEMO_IMAGES)
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


def labelled_test(root: Path, pool: Dataset) -> Dataset:
    """The challenge replica's test images with their hidden labels (`test_labels.txt`), in the pool's class list."""
    from kshot.data.listfile import read_list_file

    listed = read_list_file(root / "test_labels.txt", root=root)
    return Dataset(root, [Item(it.path, it.label) for it in listed.items], pool.classnames, pool.class_domains,
                   name="toyworld-test", raw_classnames=pool.raw_classnames)


def run_demo(out: Path, *, seed: int = 1, all_methods: bool = False, cache: Path | None = None,
             shots: tuple[int, ...] = DEMO_SHOTS, methods: list[str] | None = None,
             console: Console | None = None) -> dict:
    """Run the demo and write its report to `out`; returns a summary dict (also written as summary.json)."""
    from kshot.backbones import load_backbone
    from kshot.data.sources import load_dataset
    from kshot.workflow import text_weights_for, prompt_spec_for

    con = console or Console()
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = ensure_demo_world(_world_root(cache))
    con.print(f"[bold]toy world[/] in {root}")
    pool = load_dataset(root, layout="challenge", split="train")
    test = labelled_test(root, pool)
    bb = load_backbone("toy:clip")
    store = FeatureStore((Path(cache) if cache else default_cache_dir().parent) / "features",
                         extract=ExtractConfig(batch_size=256, num_workers=0))
    pool_fs = store.get(bb, pool, name="pool")
    test_fs = store.get(bb, test, name="test")
    tw = text_weights_for(bb, pool, prompt_spec_for(pool))
    con.print(f"features: pool {len(pool_fs)}, test {len(test_fs)} ({time.time() - t0:.1f}s so far)")

    seen = torch.unique(pool_fs.labels)
    lut = torch.full((pool.num_classes,), -1, dtype=torch.long)
    lut[seen] = torch.arange(len(seen))
    test_seen = test_fs.subset(torch.nonzero(lut[test_fs.labels] >= 0).flatten())
    seen_inputs = FewShotInputs("toyworld", bb.spec, replace(pool_fs, labels=lut[pool_fs.labels]),
                                replace(test_seen, labels=lut[test_seen.labels]),
                                [pool.classnames[c] for c in seen.tolist()], tw[seen], bb.logit_scale)

    names = methods or [m for m in cached_feature_methods() if all_methods or m != "zeroshot"]
    store_path = out / "results.jsonl"
    if store_path.exists():
        store_path.unlink()
    results = ResultStore(store_path)
    zs, _ = run_cell(seen_inputs, "zeroshot", 0, seed, {})
    results.append(zs)
    con.print(f"zero-shot top-1 {100 * zs['top1']:.2f} (opaque domain {100 * zs['per_domain'][OPAQUE_DOMAIN]:.2f})")
    records = run_fewshot(seen_inputs, FewShotProtocol(names, shots, (seed,)), results,
                          progress=lambda s: con.print("  " + s))

    table = markdown_table(records, title="top-1 %, all seen classes", baseline=zs["top1"])
    opaque = markdown_table(records, lambda r: r["per_domain"].get(OPAQUE_DOMAIN),
                            title=f"top-1 %, {OPAQUE_DOMAIN} (opaque names)",
                            baseline=zs["per_domain"][OPAQUE_DOMAIN])
    plot_curves(records, out / "fewshot_curves.png", "toy world, tiny CLIP: all seen classes", zero_shot=zs["top1"])
    plot_curves(records, out / "fewshot_curves_opaque.png", f"toy world: {OPAQUE_DOMAIN} (opaque class names)",
                metric=lambda r: r["per_domain"].get(OPAQUE_DOMAIN), zero_shot=zs["per_domain"][OPAQUE_DOMAIN])

    # Challenge replica: every class (incl. those without training images), 16 shots (or the largest K), top-5.
    k_sub = max(shots)
    all_inputs = FewShotInputs("toyworld-all", bb.spec, pool_fs, test_fs, pool.classnames, tw, bb.logit_scale)
    sub_rec, logits = run_cell(all_inputs, SUBMISSION_METHOD, k_sub, seed, {})
    from kshot.eval.result_file import read_result_txt, write_result_txt

    write_result_txt(out / "result.txt", test_fs.paths, topk_ids(logits, 5).numpy(), zip_it=True)
    read_result_txt(out / "result.txt", num_classes=pool.num_classes, test_dir=root / "TestSetA")  # validates
    pred = logits.argmax(1).numpy()
    cm = confusion_matrix(pred, test_fs.labels.numpy(), pool.num_classes)
    plot_confusion(cm, pool.classnames, out / "confusion.png",
                   f"{SUBMISSION_METHOD}, {k_sub}-shot, all {pool.num_classes} classes")

    elapsed = time.time() - t0
    report = [
        "# kshot demo: toy world + tiny CLIP\n",
        f"Backbone `{bb.spec}` (fingerprint {bb.fingerprint}); pool {len(pool_fs)} images, test {len(test_fs)} "
        f"images, {pool.num_classes} classes ({len(seen)} with training images); seed {seed}; "
        "hyper-parameters searched on a validation split drawn from the pool (never the test images).\n",
        "## All classes with training images\n", table,
        f"\n## {OPAQUE_DOMAIN}: opaque class names, zero-shot near chance\n", opaque,
        f"\n## Challenge replica\n\n`result.txt` ({SUBMISSION_METHOD}, {k_sub} shots, all {pool.num_classes} classes "
        f"incl. unseen): top-1 {100 * sub_rec['top1']:.2f}, top-5 {100 * sub_rec['top5']:.2f}; per domain: "
        + ", ".join(f"{d} {100 * v:.2f}" for d, v in sub_rec["per_domain"].items()) + ".\n",
        f"\nPlots: `fewshot_curves.png`, `fewshot_curves_opaque.png`, `confusion.png`. Took {elapsed:.0f} s.\n",
    ]
    (out / "report.md").write_text("\n".join(report))
    summary = {"zeroshot": zs, "records": records, "submission": sub_rec, "seconds": elapsed}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    con.print(table)
    con.print(opaque)
    con.print(f"report: {out / 'report.md'}  ({elapsed:.0f} s)")
    return summary
