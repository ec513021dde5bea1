"""`kshot demo`: the whole toolkit on the shipped toy world and tiny CLIP, offline, in a few minutes on a CPU.

Steps: export the toy world to disk in the challenge layout (reused when present) -> load `toy:clip` -> cached
features of the training pool and the labelled test images -> zero-shot and every cached-feature method at
1/2/4/8/16 shots (one seed) through the protocol runner -> a report folder: Markdown table (overall and the
opaque-name domain, where zero-shot is weak), few-shot curves, a confusion plot and a `result.txt` for the
challenge-layout replica (all classes, including those without training images) from the `toy_cascade` pipeline,
and one `kshot fit` run (`runs/`, LP++ at 4 shots on every class); it ends by printing the `kshot serve` command
that opens that run and the toy world in the web app.

A short section fits the methods that train through the image encoder — chosen by capability (`trains_encoders`
holds 'image': CLIP-LoRA, MaPLe, PromptSRC, ...), each with its class's `quick_overrides` (few iterations) — on
`IMAGE_SHOTS` shots of the opaque-name classes and scores them on their own tuned encoder's test features.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
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
from kshot.eval.metrics import confusion_matrix
from kshot.eval.report import markdown_table, plot_confusion, plot_curves
from kshot.features import FeatureSet, FeatureStore, default_cache_dir
from kshot.features.extract import ExtractConfig
from kshot.experiment import build_task, draw_selection
from kshot.methods import METHODS, create

DEMO_SHOTS = (1, 2, 4, 8, 16)
#: Few-shot curves are run per group of domains: named classes (zero-shot strong, incl. combinations held out of
#: pretraining) and the opaque-name domain (zero-shot at chance; the shots carry the accuracy).
DEMO_GROUPS = {"named": ("Shapes", "Novel"), "opaque": ("Creatures",)}
GROUP_TITLES = {"named": "named classes (Shapes + held-out Novel combinations)",
                "opaque": "Creatures: opaque class names"}
SUBMISSION_PIPELINE = "toy_cascade"
#: The run `kshot demo` saves for the web app: (method, shots). LP++ gives classes without shots a text-only logit.
WEB_RUN = ("lpp", 4)
IMAGE_GROUP, IMAGE_SHOTS = "opaque", 4  # the image-trained section: where the shots carry the accuracy


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
    from kshot.experiment import prompt_spec_for, text_weights_for

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

    groups = {name: [c for c, d in enumerate(pool.class_domains) if d in doms] for name, doms in DEMO_GROUPS.items()}
    names = methods or cached_feature_methods(include_backbone=all_methods)
    names = [m for m in names if m != "zeroshot"]
    store_path = out / "results.jsonl"
    if store_path.exists():
        store_path.unlink()
    results = ResultStore(store_path)
    sections, summary_groups = [], {}
    with single_thread():
        for group, class_ids in groups.items():
            inputs = restrict_classes(f"toyworld-{group}", bb, pool_fs, test_fs, tw, pool.classnames, class_ids)
            zs, _ = run_cell(inputs, "zeroshot", 0, seed, {})
            results.append(zs)
            con.print(f"[bold]{group}[/] ({len(class_ids)} classes): zero-shot top-1 {100 * zs['top1']:.2f} "
                      f"(chance {100 / len(class_ids):.2f})")
            records = run_fewshot(inputs, FewShotProtocol(names, shots, (seed,)), results,
                                  progress=lambda s: con.print("  " + s))
            title = GROUP_TITLES[group]
            table = markdown_table(records, title="top-1 %", baseline=zs["top1"])
            plot_curves(records, out / f"fewshot_curves_{group}.png", f"toy world, tiny CLIP: {title}",
                        zero_shot=zs["top1"])
            sections += [f"## {title}: {len(class_ids)} classes, chance {100 / len(class_ids):.2f} %\n", table, ""]
            summary_groups[group] = {"zeroshot": zs, "records": records}
            con.print(table)

    # Methods that train through the image encoder (many threads help here): by capability, quick settings.
    image_records = image_trained_section(pool, test, bb, store, tw, groups[IMAGE_GROUP], seed, con)
    if image_records:
        sections += [image_trained_markdown(image_records, summary_groups[IMAGE_GROUP]["zeroshot"]["top1"]), ""]

    # Challenge replica: every class (incl. those without training images), the best shipped pipeline, top-5.
    sub_rec, pred = challenge_replica(root, out, cache)
    cm = confusion_matrix(pred, test_fs.labels.numpy(), pool.num_classes)
    plot_confusion(cm, pool.classnames, out / "confusion.png", f"{SUBMISSION_PIPELINE}, all {pool.num_classes} classes")

    run = save_web_run(out / "runs", root, pool, pool_fs, bb, tw, seed)
    serve_cmd = f"kshot serve --root {root.parent} --runs {out / 'runs'}"
    elapsed = time.time() - t0
    report = [
        "# kshot demo: toy world + tiny CLIP\n",
        f"Backbone `{bb.spec}` (fingerprint {bb.fingerprint}); pool {len(pool_fs)} images, test {len(test_fs)} "
        f"images, {pool.num_classes} classes; seed {seed}. Hyper-parameters are searched on a validation split drawn "
        "from the pool (never the test images). Reproduce with `kshot demo`.\n",
        *sections,
        f"## Challenge replica\n\n`result.txt` (the `{SUBMISSION_PIPELINE}` pipeline, 4 shots per class, all "
        f"{pool.num_classes} classes, including the {sum(1 for d in pool.class_domains if d == 'Unseen')} without "
        f"training images; its report in `challenge/`): top-1 {100 * sub_rec['top1']:.2f}, top-5 "
        f"{100 * sub_rec['top5']:.2f}; per domain: "
        + ", ".join(f"{d} {100 * v['top1']:.2f}" for d, v in sub_rec["per_domain"].items()) + ".\n",
        "Plots: " + ", ".join(f"`fewshot_curves_{g}.png`" for g in groups) + ", `confusion.png`. "
        f"Took {elapsed:.0f} s.\n",
        f"## Look at it\n\n`{serve_cmd}`, then open http://127.0.0.1:8000/: the run `{run.name}` ({WEB_RUN[0]}, "
        f"{WEB_RUN[1]} shots per class, every class) classifies a dropped image; or pick `{root.name}` and fit.\n",
    ]
    (out / "report.md").write_text("\n".join(report))
    summary = {"groups": summary_groups, "image_trained": image_records, "submission": sub_rec, "seconds": elapsed}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    con.print(f"challenge replica: {out / 'result.txt'} (top-1 {100 * sub_rec['top1']:.2f} on the hidden labels)")
    con.print(f"report: {out / 'report.md'}  ({elapsed:.0f} s)")
    con.print(f"look at it in the web app: {serve_cmd}  then open http://127.0.0.1:8000/ and drop a test image from "
              f"{root / 'TestSetA'} on the run {run.name}, or pick {root.name} and fit another", soft_wrap=True)
    return summary


def save_web_run(runs: Path, root: Path, pool: Dataset, pool_fs: FeatureSet, bb, tw: torch.Tensor | None,
                 seed: int) -> Path:
    """Fit `WEB_RUN` on the whole pool from its cached features and save it as a `kshot fit` folder in `runs`."""
    from kshot import experiment as ex
    from kshot.methods import create

    method, shots = WEB_RUN
    sel = ex.select_shots(pool, shots, seed)
    m = create(method)
    with single_thread():
        m.fit(ex.build_task(m, pool_fs.subset(sel.shots), pool.classnames, tw, val=pool_fs.subset(sel.val),
                            logit_scale=bb.logit_scale, backbone=bb, seed=seed))
    info = ex.FittedRun.describe(bb, pool, ex.prompt_spec_for(pool), method=method, shots=shots, seed=seed, data=root)
    return ex.FittedRun(m, info).save(runs / f"{method}-{shots}shot", pool, sel.shots)


def challenge_replica(root: Path, out: Path, cache: Path | None) -> tuple[dict, "np.ndarray"]:
    """Run the `toy_cascade` pipeline on the replica; result.txt/.zip copied to `out`. Returns (test metrics of the
    pipeline's output stage on the hidden labels, top-1 class id per test image in `test_labels.txt` order)."""
    import shutil

    import numpy as np

    from kshot.data.listfile import read_list_file
    from kshot.pipelines.configfile import load_config
    from kshot.pipelines.runner import RunOptions, run_challenge

    base = Path(cache) if cache else default_cache_dir().parent
    cfg = load_config(SUBMISSION_PIPELINE, [])
    res = run_challenge(cfg, root, RunOptions(
        out=out / "challenge", test_dir=root / "TestSetA", test_labels=root / "test_labels.txt",
        cache_dir=base / "features", progress=False))
    for name in ("result.txt", "result.zip"):
        shutil.copy(out / "challenge" / name, out / name)
    top1 = dict(zip((Path(f).name for f in res.filenames), res.top5[:, 0]))
    order = [Path(it.path).name for it in read_list_file(root / "test_labels.txt", root=root).items]
    output = next(st for st in res.report["stages"] if st["name"] == cfg.output)
    return output["metrics"]["test"], np.array([top1[n] for n in order])


@contextmanager
def single_thread():
    """Few-shot heads on cached features are tiny matrix problems: one thread avoids OpenMP spin-waits."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def restrict_classes(name: str, bb, pool_fs: FeatureSet, test_fs: FeatureSet, tw: torch.Tensor,
                     classnames: list[str], class_ids: list[int]) -> FewShotInputs:
    """Inputs for a subset of classes, relabelled 0..len(class_ids)-1 (pool/test items of other classes dropped)."""
    lut = torch.full((len(classnames),), -1, dtype=torch.long)
    lut[class_ids] = torch.arange(len(class_ids))

    def keep(fs: FeatureSet) -> FeatureSet:
        sub = fs.subset(torch.nonzero(lut[fs.labels] >= 0).flatten())
        return replace(sub, labels=lut[sub.labels])

    return FewShotInputs(name, bb.spec, keep(pool_fs), keep(test_fs), [classnames[c] for c in class_ids],
                         tw[class_ids], bb.logit_scale, encoder=bb)


def image_trained_methods() -> list[str]:
    """Registered methods that train through the image encoder (`trains_encoders` holds 'image'), by capability."""
    return [e.name for e in METHODS if "image" in e.obj.trains_encoders and not e.obj.selects_method]


def restrict_dataset(ds: Dataset, class_ids: list[int], name: str) -> Dataset:
    """Items of `class_ids`, relabelled 0..len(class_ids)-1 (the image-side twin of `restrict_classes`)."""
    lut = {c: i for i, c in enumerate(class_ids)}
    items = [Item(it.path, lut[it.label], it.domain) for it in ds.items if it.label in lut]
    domains = [ds.class_domains[c] for c in class_ids] if ds.class_domains else None
    raw = [ds.raw_classnames[c] for c in class_ids] if ds.raw_classnames else None
    return Dataset(ds.root, items, [ds.classnames[c] for c in class_ids], domains, name=name, raw_classnames=raw)


def image_trained_section(pool: Dataset, test: Dataset, bb, store: FeatureStore, tw: torch.Tensor,
                          class_ids: list[int], seed: int, con: Console, shots: int = IMAGE_SHOTS,
                          methods: list[str] | None = None) -> list[dict]:
    """Fit every image-trained method (`image_trained_methods`) with its `quick_overrides` on `shots` shots per class
    of `class_ids`; top-1 on the test images of those classes through each method's `tuned_backbone`. One record
    per method: method, shots, seed, overrides, top1 (0-1), fit_seconds."""
    sub_pool = restrict_dataset(pool, class_ids, f"{pool.name}-{IMAGE_GROUP}")
    sub_test = restrict_dataset(test, class_ids, f"{test.name}-{IMAGE_GROUP}")
    sel = draw_selection(sub_pool.labels, shots, seed, k_val=0)
    shot_images = sub_pool.subset(sel.shots)
    train = store.get(bb, shot_images, name="image-trained/shots")
    labels = torch.as_tensor(sub_test.labels)
    records = []
    for name in methods if methods is not None else image_trained_methods():
        quick = dict(METHODS.get(name).quick_overrides)
        m = create(name, **quick)
        task = build_task(m, train, sub_pool.classnames, tw[class_ids], logit_scale=bb.logit_scale, backbone=bb,
                          images={"train": shot_images}, seed=seed)
        t0 = time.time()
        m.fit(task)
        fit_s = time.time() - t0
        feats = store.get(m.tuned_backbone(bb), sub_test, name=f"image-trained/{name}")
        top1 = float((m.logits(feats.features).argmax(1).cpu() == labels).float().mean())
        records.append({"method": name, "shots": shots, "seed": seed, "overrides": quick, "top1": top1,
                        "fit_seconds": round(fit_s, 1)})
        con.print(f"  {name} ({shots} shots, {', '.join(f'{k}={v}' for k, v in quick.items())}): top-1 "
                  f"{100 * top1:.2f} on its tuned encoder ({fit_s:.0f} s)")
    return records


def image_trained_markdown(records: list[dict], zeroshot: float) -> str:
    """The report section of `image_trained_section`."""
    rows = [f"| {r['method']} | {100 * r['top1']:.2f} | {r['fit_seconds']:.0f} | "
            + ", ".join(f"`{k}={v}`" for k, v in r["overrides"].items()) + " |" for r in records]
    return "\n".join([
        f"## Methods that train through the image encoder: {GROUP_TITLES[IMAGE_GROUP]}, {records[0]['shots']} shots\n",
        "Chosen by capability (`trains_encoders` holds 'image'), each with its quick settings (`quick_overrides`: "
        "a few iterations, not the official schedule), scored on the test features of its own tuned encoder. "
        f"Zero-shot: {100 * zeroshot:.2f}.\n",
        "| method | top-1 % | fit s | quick settings |", "|---|---:|---:|---|", *rows])
