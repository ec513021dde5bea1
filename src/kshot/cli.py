"""The `kshot` command: one verb per job, thin over the library (see DESIGN.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from kshot.cli_errors import main as run_cli_main
from kshot.devices import device_option
from kshot.errors import KshotError
from kshot.progress import set_quiet

app = typer.Typer(rich_markup_mode=None, add_completion=False, no_args_is_help=True,
                  help="kshot: few-shot adaptation of pretrained vision(-language) models from cached features.\n\n"
                       "Example: kshot fit photos/ -m auto -o runs/auto && "
                       "kshot predict new/ -a runs/auto -o labels.csv")
console = Console(stderr=True)



def _version(value: bool) -> None:
    if value:
        from kshot import __version__

        typer.echo(f"kshot {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what each step chooses (INFO)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and requested output: no progress bars."),
) -> None:
    """kshot: few-shot adaptation of pretrained vision(-language) models from cached features.

    Example: kshot fit photos/ -m auto -o runs/auto && kshot predict new/ -a runs/auto -o labels.csv
    """
    import logging

    set_quiet(quiet)  # every kshot bar (extraction, sweeps, training epochs), even with tqdm already imported
    console.quiet = quiet
    if quiet:
        logging.getLogger().setLevel(logging.ERROR)
    elif verbose:
        logging.getLogger().setLevel(logging.INFO)


BackboneOpt = typer.Option("toy:clip", "--backbone", "-b",
                           help="Backbone spec: open_clip:ARCH@TAG, open_clip:ARCH@/path/file, timm:NAME, toy:clip, "
                                "or a checkpoint path.")
LayoutOpt = typer.Option("auto", "--layout", help="Data layout: auto|imagefolder|coop|challenge|list|folder.")
CacheOpt = typer.Option(None, "--cache", help="Cache folder, as $KSHOT_CACHE (default ~/.cache/kshot): features "
                        "in CACHE/features/.")
DeviceOpt = typer.Option(None, "--device", callback=device_option,
                         help="cpu, cuda, cuda:1 ... (default: CUDA when available).")


def _store(cache: Optional[Path], device: Optional[str], batch_size: int = 128, workers: Optional[int] = None, *,
           chunk: Optional[int] = None, progress: bool = True, **extract_options):
    """The feature store of a command; `extract_options` are further ExtractConfig fields (only those set)."""
    import dataclasses

    from kshot.errors import ConfigError
    from kshot.features import ExtractConfig, FeatureStore
    from kshot.features.cache import DEFAULT_CHUNK, features_dir

    known = {f.name for f in dataclasses.fields(ExtractConfig)}
    unknown = sorted(k for k in extract_options if k not in known)
    if unknown:
        raise ConfigError(f"this kshot build's extractor has no setting {', '.join(unknown)} "
                          f"(ExtractConfig fields: {', '.join(sorted(known))})")
    cfg = ExtractConfig(batch_size=batch_size, num_workers=workers, device=device, progress=progress, **extract_options)
    return FeatureStore(features_dir(cache), chunk=chunk or DEFAULT_CHUNK, extract=cfg)


def _check_out(out: Path, option: str = "--out", folder: bool = True) -> None:
    """Refuse an output path that cannot be written before any work starts: `out` (a folder, or with
    `folder=False` a file) or one of its parents is in the way."""
    from kshot.errors import ConfigError

    if out.exists() and out.is_dir() != folder:
        raise ConfigError(f"{option} {out}: {'a file' if folder else 'a folder'} is in the way (expected "
                          f"{'a folder' if folder else 'a file'})")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{option} {out}: {parent} is a file, not a folder")
            break


def _load_backbone(spec: str, device: Optional[str]):
    import torch

    from kshot.backbones import load_backbone

    return load_backbone(spec, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))


@app.command()
def extract(
    data: Path = typer.Argument(..., help="Dataset path (folder, split JSON, list file or challenge root)."),
    backbone: str = BackboneOpt,
    layout: str = LayoutOpt,
    split: str = typer.Option("train", help="train | val | test | testA | testB (layout-dependent)."),
    views: int = typer.Option(0, help="Augmented views per image to cache as well."),
    augment: str = typer.Option("tip", help="Augmentation policy for --views: tip | seed002."),
    batch_size: int = typer.Option(128, min=1, help="Images per forward pass."),
    workers: Optional[int] = typer.Option(None, min=0, help="Decoding worker processes (default: automatic)."),
    cache: Optional[Path] = CacheOpt,
    device: Optional[str] = DeviceOpt,
    chunk: Optional[int] = typer.Option(None, "--chunk", min=1, help="Items per resumable part file (default 8192): "
                                        "the unit of crash-resume and of sharding over ranks."),
    decode: str = typer.Option("auto", "--decode", help="Where images are decoded: auto | gpu (nvJPEG) | cpu "
                               "(worker processes) | pil."),
    image_cache: Optional[Path] = typer.Option(None, "--image-cache", help="Folder of decoded uint8 images, reused "
                                               "by later runs and other backbones of the same input geometry "
                                               "(augmented views always decode from the files)."),
    compile_model: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile the image encoder "
                                       "(falls back to eager if compiling fails)."),
    distributed: Optional[bool] = typer.Option(None, "--distributed/--no-distributed", help="Shard the work over "
                                               "torchrun ranks (RANK, WORLD_SIZE, LOCAL_RANK); default: on when "
                                               "launched by torchrun. See docs/scale-out.md."),
) -> None:
    """Compute and cache image features of a dataset (reused by every later command).

    Several GPUs or nodes: `torchrun --nproc-per-node N -m kshot extract DATA ...` (the cache folder shared by all
    nodes). A re-run after a crash computes only the missing parts.

    Example: kshot extract photos/ -b open_clip:ViT-B-32@openai --cache ~/.cache/kshot
    """
    from kshot.data.coop_source import load_any
    from kshot.features import AugmentPolicy
    from kshot.features.distributed import process_group, rank_device, shard_from_env

    decoders = ("auto", "gpu", "cpu", "pil")
    if decode not in decoders:
        raise typer.BadParameter(f"{decode!r} is not one of {', '.join(decoders)}", param_hint="'--decode'")
    if image_cache is not None and image_cache.exists() and not image_cache.is_dir():
        raise typer.BadParameter(f"{image_cache} exists and is not a folder", param_hint="'--image-cache'")
    shard = None if distributed is False else shard_from_env(required=distributed is True)
    dev = rank_device(shard, device) if shard is not None else device
    options = {k: v for k, v in (("decode", decode), ("image_cache", image_cache), ("compile", compile_model))
               if v not in ("auto", None, False)}  # only what differs from ExtractConfig's defaults
    policy = AugmentPolicy(augment, views) if views else AugmentPolicy()
    rank = "" if shard is None else f"rank {shard.rank}/{shard.world}: "
    with process_group(shard, dev or "cpu"):
        ds = load_any(data, layout=layout, split=split)
        bb = _load_backbone(backbone, dev)
        store = _store(cache, dev, batch_size, workers, chunk=chunk, progress=shard is None or shard.rank == 0,
                       **options)
        fs = store.get(bb, ds, policy, name=f"{ds.name}/{split}", shard=shard)
    if shard is not None and not store.last_hit:
        console.print(f"{rank}computed {len(store.last_computed)} of {store.last_parts} parts")
    if shard is not None and shard.rank != 0:
        return
    where = store.entry_dir(bb, ds, policy)
    console.print(f"{'reused' if store.last_hit else 'cached'} {len(fs)} x {fs.dim} features "
                  f"({policy.views} augmented views) in {where}")
    for path, reason in fs.skipped:
        console.print(f"[yellow]skipped[/] {path}: {reason}")


@app.command()
def fit(
    data: Path = typer.Argument(..., help="Training pool (labelled dataset)."),
    method: str = typer.Option(..., "--method", "-m", help="Registered method name (see `kshot methods`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the fitted artifact."),
    backbone: str = BackboneOpt,
    shots: int = typer.Option(16, "--shots", "-k", min=0, help="Shots per class."),
    seed: int = typer.Option(1, help="Sampling and training seed."),
    shots_file: Optional[Path] = typer.Option(None, help="Use (or, if missing, write) this shots file."),
    layout: str = LayoutOpt,
    split: str = typer.Option("train", help="Split of DATA holding the training pool."),
    templates: Optional[list[str]] = typer.Option(None, "--template", help="Prompt template(s) with {}; repeat."),
    prompts: Optional[Path] = typer.Option(None, help="Prompt JSON file or folder (per domain / per class)."),
    views: int = typer.Option(0, help="Augmented views of the shots (Tip-Adapter uses 10)."),
    augment: str = typer.Option("tip", help="Augmentation policy for --views: tip | seed002."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="Method config override key=value; repeat."),
    cache: Optional[Path] = CacheOpt,
    device: Optional[str] = DeviceOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the finished run in --out (it is kept until "
                                   "the new fit has succeeded)."),
) -> None:
    """Fit a method on K shots per class (validation split drawn from the rest of the pool) and save it.

    Example: kshot fit photos/ -m auto -k 16 --seed 1 -o runs/auto
    """
    from kshot import experiment as ex
    from kshot.data.coop_source import load_any
    from kshot.data.fewshot import write_shots_file
    from kshot.features import AugmentPolicy
    from kshot.features.distributed import process_group, rank_device
    from kshot.methods import create
    from kshot.outputs import RunFolder

    _check_out(out)
    run_dir = RunFolder(out, overwrite=overwrite, marker="task.json", what="`kshot fit` run")
    run_dir.check()  # refuse before any work; the run is written to a staging folder and swapped in at the end
    m = create(method, **ex.parse_overrides(overrides or [], method))
    shard = _fit_shard(m)
    dev = rank_device(shard, device) if shard is not None else device
    with process_group(shard, dev or "cpu"):  # DDP under torchrun: the engine all-reduces the gradients
        pool = load_any(data, layout=layout, split=split)
        sel = ex.select_shots(pool, shots, seed, shots_file=shots_file)
        bb = _load_backbone(backbone, dev)
        m.preflight(pool.classnames, bb, images=True)  # prompt lengths/depths, before features or training
        store = _store(cache, dev, progress=shard is None or shard.rank == 0)
        used, local = ex.remap_selection(sel)
        policy = AugmentPolicy(augment, views) if views else AugmentPolicy()
        feats = _rank0_first(shard, lambda: ex.pool_features(store, bb, pool, used, policy))
        spec = ex.prompt_spec_for(pool, templates, prompts)
        tw = ex.text_weights_for(bb, pool, spec)
        images = {"train": pool.subset(sel.shots), "val": pool.subset(sel.val)} if m.trains_encoders else None
        task = ex.build_task(m, feats.subset(local.shots), pool.classnames, tw, val=feats.subset(local.val),
                             logit_scale=bb.logit_scale, backbone=bb, images=images, seed=seed)
        m.fit(task)
    if shard is not None and shard.rank != 0:
        console.print(f"rank {shard.rank}/{shard.world}: trained; rank 0 writes {out}")
        return
    info = ex.FittedRun.describe(bb, pool, spec, method=method, shots=shots, seed=seed, data=data)
    val, encoder = ex.method_features(m, store, bb, pool.subset(sel.val), feats.subset(local.val))
    report = ex.fit_report(m, val, encoder)  # an encoder-tuning method is scored on its tuned encoder
    info.update(report)
    with run_dir as stage:
        ex.FittedRun(m, info).save(stage, pool, sel.shots, report=report)
    if shots_file is not None and not Path(shots_file).is_file():
        write_shots_file(pool, sel.shots, shots_file)
    console.print(f"fitted {method} on {len(sel.shots)} shots ({pool.num_classes} classes) -> {out}")
    _print_fit_report(report, m, shots)


def _fit_shard(m):
    """The torchrun shard of `kshot fit` (None outside torchrun); only methods that train encoders run as DDP."""
    from kshot.errors import ConfigError
    from kshot.features.distributed import shard_from_env

    shard = shard_from_env()
    if shard is not None and not m.trains_encoders:
        raise ConfigError(f"{m.name} fits on cached features in one process: run `kshot fit` without torchrun "
                          "(`torchrun ... -m kshot extract` shards the feature extraction)")
    return shard


def _rank0_first(shard, compute):
    """`compute()` on rank 0, then on the other ranks after a barrier (rank 0 fills the feature cache they read)."""
    if shard is None:
        return compute()
    if shard.rank == 0:
        out = compute()
        shard.barrier()
        return out
    shard.barrier()
    return compute()


def _print_fit_report(report: dict, m, shots: int) -> None:
    from rich.markup import escape

    from kshot.methods import config_to_dict

    if "auto" in report:
        console.print(f"auto: {escape(report['auto']['reason'])}")
    if report["val_top1_percent"] is not None:
        tuned = " of the tuned encoder" if "image" in m.trains_encoders else ""
        console.print(f"validation top-1{tuned} {report['val_top1_percent']:.2f} % on {report['val_images']} "
                      "held-out pool images (recorded in task.json and method.json)")
    else:
        keep = f" (-k {shots - 4} keeps 4 per class for validation)" if shots > 4 else ""
        settings = ", ".join(f"{k}={v}" for k, v in config_to_dict(m.config).items()) or "none"
        console.print(f"[yellow]no validation split[/]: every class has only its {shots} shot(s){escape(keep)}; "
                      f"nothing was searched, {m.name} uses its default settings: {escape(settings)}")


@app.command()
def predict(
    data: Path = typer.Argument(..., help="Images to classify (dataset path; a flat folder is fine)."),
    artifact: Optional[Path] = typer.Option(None, "--artifact", "-a", help="Folder written by `kshot fit`."),
    method: str = typer.Option("zeroshot", "--method", "-m", help="Without --artifact: only 'zeroshot'."),
    classes: Optional[Path] = typer.Option(None, help="Dataset giving the class list (zero-shot on unlabelled data)."),
    backbone: str = BackboneOpt,
    layout: str = LayoutOpt,
    split: Optional[str] = typer.Option(None, help="Split of DATA to classify (default: its test split if it has "
                                        "one, else the whole folder)."),
    templates: Optional[list[str]] = typer.Option(None, "--template", help="Prompt template(s) with {}; repeat."),
    prompts: Optional[Path] = typer.Option(None, help="Prompt JSON file or folder."),
    k: int = typer.Option(5, "--topk", min=1, help="Classes per image to write (top-k)."),
    out: Path = typer.Option(Path("predictions.csv"), "--out", "-o", help="Predictions file: .csv, .json or .parquet "
                             "(path, top-k class names, ids and scores, the run they came from)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="csv | json | parquet (default: from the -o suffix)."),
    result_txt: Optional[Path] = typer.Option(None, "--result-txt", help="Also write the challenge's result.txt."),
    cache: Optional[Path] = CacheOpt,
    device: Optional[str] = DeviceOpt,
    backend: str = typer.Option("torch", "--backend", help="torch, or jittor: image/text towers and the head run in "
                                "Jittor (optional; see `pip install kshot[jittor]` / $KSHOT_JITTOR_PYTHON)."),
    jittor_python: Optional[str] = typer.Option(None, "--jittor-python", help="Python with jittor installed."),
    jittor_device: str = typer.Option("cpu", "--jittor-device", help="Jittor device: cpu or cuda."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Run this `kshot export --format onnx` model through "
                                        "onnxruntime instead (see `pip install kshot[deploy]`)."),
) -> None:
    """Predict top-k classes with a fitted artifact, or zero-shot.

    Example: kshot predict new_photos/ -a runs/auto -o labels.csv
    """
    from kshot import experiment as ex

    _check_out(out, "--out", folder=False)
    if result_txt is not None:
        _check_out(result_txt, "--result-txt", folder=False)
    if backend not in ("torch", "jittor"):
        raise KshotError(f"--backend must be torch or jittor, not {backend!r}")
    ds = _read_images(data, layout, split)
    if onnx is not None:
        from kshot.deploy.onnx_predict import predict_dataset

        fs, logits, names = predict_dataset(onnx, ds, console.print)
        _write_predictions(fs, logits, ds, k, out, result_txt, fmt, names, str(onnx))
        return
    if backend == "jittor":
        fs, logits, names = _predict_jittor(ds, artifact, method, classes, backbone, templates, prompts,
                                            jittor_python, jittor_device)
        _write_predictions(fs, logits, ds, k, out, result_txt, fmt, names,
                           str(artifact) if artifact is not None else f"zeroshot:{backbone}")
        return
    if artifact is not None:
        m, bb, names = _artifact_method(artifact, device)
        bb = _inference_backbone(m, bb)
    else:
        class_ds = _zeroshot_classes(ds, method, classes)
        bb = _load_backbone(backbone, device)
        tw = ex.text_weights_for(bb, class_ds, ex.prompt_spec_for(class_ds, templates, prompts))
        m = ex.zeroshot_on(class_ds.classnames, tw, bb.logit_scale)
        names = class_ds.classnames
    fs = _store(cache, device).get(bb, ds, name=f"{ds.name}/{split}")
    _write_predictions(fs, ex.predict_logits(m, fs), ds, k, out, result_txt, fmt, names,
                       str(artifact) if artifact is not None else f"zeroshot:{backbone}")


def _read_images(data: Path, layout: str, split: Optional[str]):
    """`split` of DATA (default: its test split if it has one, else the whole folder): a CoOp benchmark or
    ImageNet-variant folder (`is_benchmark_folder`, `is_variant_folder`) through its definition, anything else by
    layout."""
    from kshot.data.benchmarks import is_benchmark_folder
    from kshot.data.coop_source import load_any
    from kshot.data.imagenet_variants import is_variant_folder
    from kshot.data.sources import default_split, load_dataset

    if layout == "auto" and (is_benchmark_folder(data) or is_variant_folder(data)):
        return load_any(data, split=split or "test")
    return load_dataset(data, layout=layout, split=split or default_split(data, layout))


def _predict_jittor(ds, artifact, method, classes, backbone, templates, prompts, python, device):
    """(features, logits, classnames) with the Jittor backend: a fitted artifact's head, or zero-shot."""
    from kshot import experiment as ex
    from kshot.interop.predict import predict_jittor

    if artifact is not None:
        m, bb, names = _artifact_method(artifact, "cpu")
        return (*predict_jittor(bb, ds, m, python=python, device=device), names)
    class_ds = _zeroshot_classes(ds, method, classes)
    bb = _load_backbone(backbone, "cpu")
    return (*predict_jittor(bb, ds, None, classnames=class_ds.classnames, text_spec=ex.prompt_spec_for(
        class_ds, templates, prompts), class_domains=class_ds.class_domains, python=python, device=device),
        class_ds.classnames)


def _artifact_method(artifact: Path, device: Optional[str]):
    """(method, backbone, classnames) of a `kshot fit` folder, refused if the backbone no longer loads as the same
    weights."""
    from kshot.experiment import FittedRun

    run = FittedRun.load(artifact)
    bb = _load_backbone(run.info["backbone"], device)
    run.check_backbone(bb, artifact)
    return run.method, bb, run.info.get("classnames")


def _inference_backbone(m, bb):
    """The backbone whose image features `m.logits` takes: `bb` attached to a method that runs it, and for a method
    that trains the image encoder its tuned copy (own fingerprint, so its features are cached apart)."""
    if m.needs_backbone:
        m.attach_backbone(bb)
    return m.tuned_backbone(bb) if "image" in m.trains_encoders else bb


def _zeroshot_classes(ds, method: str, classes: Optional[Path]):
    """The dataset giving the class list of a prediction without an artifact (only zero-shot needs none)."""
    if method != "zeroshot":
        raise KshotError(f"--method {method} needs a fitted --artifact (run `kshot fit` first)")
    class_ds = _read_images(classes, "auto", "train") if classes else ds
    if not class_ds.classnames:
        raise KshotError("no class list: pass --classes with a labelled dataset or a challenge root")
    return class_ds


def _write_predictions(fs, logits, ds, k, out, result_txt, fmt=None, classnames=None, run="") -> None:
    from kshot.eval.predictions import Predictions
    from kshot.eval.result_file import write_result_txt

    preds = Predictions.from_logits(fs.paths, logits, k, classnames=classnames, run=run)
    preds.write(out, fmt)
    console.print(f"wrote {len(preds.paths)} predictions -> {out}")
    if result_txt is not None:
        write_result_txt(result_txt, fs.paths, preds.ids, zip_it=True)
        console.print(f"wrote {result_txt} (+ .zip)")
    if ds.has_labels and len(fs):
        _print_metrics(_score(preds, ds))


def _score(preds, ds) -> dict:
    """Metrics of `preds` against labelled `ds`, classes matched by name when the predictions name theirs (ids
    otherwise, as in a result.txt); images of a class the predictions do not know count as wrong, with a warning."""
    import numpy as np

    from kshot.data.classes import match_classes
    from kshot.eval.metrics import summarize

    by_path = {it.path: it for it in ds.items}
    by_name = {Path(it.path).name: it for it in ds.items}
    labels, doms = [], []
    for p in preds.paths:
        it = by_path.get(p) or by_name.get(Path(p).name)
        if it is None or it.label is None:
            raise KshotError(f"no label for predicted image {p!r} in the labelled dataset")
        labels.append(it.label)
        doms.append(it.domain or (ds.class_domains[it.label] if ds.class_domains else ""))
    y, names = np.asarray(labels, dtype=np.int64), ds.classnames
    num = max(ds.num_classes, int(np.max(preds.ids, initial=-1)) + 1)
    if preds.classnames:
        match = match_classes(ds.classnames, preds.classnames, present=np.unique(y), unknown="keep",
                              raw=ds.raw_classnames)
        y, names = match.labels(y), match.classnames
        num = max(len(names), num)
        if match.unknown:
            n = int((y >= len(preds.classnames)).sum())
            console.print(f"[yellow]warning:[/] {n} image(s) of {len(match.unknown)} class(es) the predictions do not "
                          f"name ({', '.join(match.unknown[:5])}{' ...' if len(match.unknown) > 5 else ''}): "
                          "scored as wrong")
    names = list(names) + [str(i) for i in range(len(names), num)]
    return summarize(preds.ids, y, num, domains=doms if any(doms) else None, classnames=names)


def _print_metrics(metrics: dict) -> None:
    table = Table(title="scores")
    table.add_column("subset")
    for col in ("n", "top1", "top5"):
        table.add_column(col, justify="right")

    def fmt(v):
        return "-" if v is None else (f"{100 * v:.2f}" if isinstance(v, float) else str(v))

    table.add_row("all", fmt(metrics["n"]), fmt(metrics["top1"]), fmt(metrics["top5"]))
    for d, m in metrics.get("per_domain", {}).items():
        table.add_row(d, fmt(m["n"]), fmt(m["top1"]), fmt(m["top5"]))
    Console().print(table)
    Console().print(f"mean per-class recall: {100 * metrics['mean_per_class']:.2f}")


@app.command()
def score(
    predictions: Path = typer.Argument(..., help="Predictions from `kshot predict` (.csv or .json), or a result.txt."),
    labels: Path = typer.Option(..., "--labels", help="Labelled dataset, or a '<image path> <label>' list whose "
                                "labels are class names or ids (the images need not exist here)."),
    layout: str = LayoutOpt,
    split: Optional[str] = typer.Option(None, help="Split of the labelled dataset (default: its test split if it "
                                        "has one, else the whole folder)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics as JSON (confusions by name)."),
    skip_missing: bool = typer.Option(False, "--skip-missing", help="Drop labelled images whose files do not exist "
                                      "(default: an error listing them)."),
) -> None:
    """Metrics of predictions against labels: top-1, top-5, mean per-class recall, per domain, confusions.

    Example: kshot score labels.csv --labels truth.txt --json scores.json
    """
    import numpy as np

    from kshot.data.paths import MissingFilesError
    from kshot.data.sources import default_split, detect_layout, load_dataset
    from kshot.eval.metrics import summarize
    from kshot.eval.predictions import Predictions, read_labels
    from kshot.eval.result_file import read_result_txt

    if json_out is not None:
        _check_out(json_out, "--json", folder=False)
    as_list = labels.is_file() and (layout in ("list", "listfile") or (layout == "auto"
                                                                        and detect_layout(labels) == "listfile"))
    try:
        ds = None if as_list else load_dataset(labels, layout=layout, split=split or default_split(labels, layout),
                                               on_missing="skip" if skip_missing else "error")
    except MissingFilesError as e:
        raise e.with_hint("(pass --skip-missing to score without them)") from None
    if predictions.suffix.lower() in (".csv", ".json"):
        preds = Predictions.read(predictions)
    else:
        rf = read_result_txt(predictions, num_classes=ds.num_classes if ds is not None and ds.num_classes else None)
        preds = Predictions(rf.filenames, rf.ids, np.zeros(rf.ids.shape, np.float32))
    if ds is not None:
        metrics = _score(preds, ds)
    else:
        truth = read_labels(labels, preds.classnames)
        by_name = {Path(p).name: v for p, v in truth.items()}
        y = []
        for p in preds.paths:
            v = truth.get(p.replace("\\", "/"), by_name.get(Path(p).name))
            if v is None:
                raise KshotError(f"no label for predicted image {p!r} in {labels}")
            y.append(v)
        num = max(len(preds.classnames or []), int(np.max(preds.ids, initial=-1)) + 1, max(y, default=-1) + 1)
        metrics = summarize(preds.ids, np.asarray(y), num, classnames=preds.classnames)
    _print_metrics(metrics)
    if json_out:
        from kshot.data.paths import atomic_write_text

        atomic_write_text(json_out, json.dumps(metrics, indent=2))


@app.command("eval")
def eval_(
    data: Path = typer.Argument(..., help="Dataset with a labelled training pool."),
    protocol: str = typer.Option("fewshot", help="Protocol: fewshot | base2new (CoOp's base-to-new)."),
    test: Optional[Path] = typer.Option(None, help="Labelled test dataset (default: DATA's test split)."),
    backbone: str = BackboneOpt,
    method_names: Optional[str] = typer.Option(None, "--methods", help="Comma-separated (default: every cached-feature "
                                               "method)."),
    shots: Optional[str] = typer.Option(None, "--shots", "-k", help="Comma-separated K values (default 1,2,4,8,16; "
                                        "base2new: 16)."),
    seeds: str = typer.Option("1,2,3", help="Comma-separated seeds."),
    layout: str = LayoutOpt,
    train_split: str = typer.Option("train", help="Split of DATA holding the pool."),
    test_split: str = typer.Option("test", help="Split holding the labelled test images."),
    templates: Optional[list[str]] = typer.Option(None, "--template", help="Prompt template(s) with {}; repeat."),
    prompts: Optional[Path] = typer.Option(None, help="Prompt JSON file or folder."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="method.key=value override; repeat."),
    preset: Optional[str] = typer.Option(None, help="base2new: prompt-learning preset (official | seed000)."),
    views: int = typer.Option(0, min=0, help="base2new: augmented views of the shots to cache and train on."),
    no_val: bool = typer.Option(False, "--no-val", help="fewshot: draw no validation split; every method runs with "
                                "its defaults (CLAP's comparison)."),
    holdout: Optional[float] = typer.Option(None, "--holdout", help="fewshot: hold out this fraction of every class "
                                            "of DATA as the test split (a folder without one), e.g. 0.2."),
    holdout_seed: int = typer.Option(1, "--seed", help="Seed of the --holdout draw."),
    out: Path = typer.Option(Path("kshot-out/eval"), "--out", "-o", help="Results folder (results.jsonl, tables, "
                             "plots); re-running skips finished cells."),
    cache: Optional[Path] = CacheOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """Run a protocol (methods x shots x seeds), resumable, and write a Markdown table and few-shot curves.

    Example: kshot eval photos/ --holdout 0.2 --methods tip_adapter,lpp --shots 1,4,16 -o kshot-out/eval
    """
    from kshot import experiment as ex
    from kshot.data.coop_source import load_any
    from kshot.eval.fewshot import FewShotInputs, FewShotProtocol, ResultStore, cached_feature_methods, run_fewshot
    from kshot.eval.report import markdown_table, plot_curves
    from kshot.outputs import atomic_write_text, check_writable, remove_stale_temporaries

    if protocol not in ("fewshot", "base2new"):
        raise KshotError(f"unknown protocol {protocol!r}; available: fewshot, base2new")
    from kshot.eval.base2new import DEFAULT_METHODS as BASE2NEW_METHODS

    names = _csv(method_names, "--methods", str) if method_names else list(
        BASE2NEW_METHODS if protocol == "base2new" else cached_feature_methods())
    shot_list = _csv(shots or ("16" if protocol == "base2new" else "1,2,4,8,16"), "--shots", int)
    seed_list = tuple(_csv(seeds, "--seeds", int))
    per_method = ex.method_overrides(overrides or [], names)  # every name and value checked before any work
    if protocol == "base2new":
        from kshot.features.cache import features_dir
        from kshot.methods.prompting.cli import run_base2new

        if not data.exists() and "," in str(data):
            raise KshotError("--protocol base2new takes one dataset per call; run it once per dataset")

        res = run_base2new(data, methods=names, backbone=backbone, shots=shot_list, seeds=seed_list, test=test,
                           layout=layout, train_split=train_split, test_split=test_split, templates=templates,
                           prompts=prompts, overrides=per_method, preset=preset, views=views, out=out,
                           cache=features_dir(cache),
                           device=device, progress=console.print)
        Console().print(res["table"])
        console.print(f"results in {out}")
        return
    proto = FewShotProtocol(names, tuple(shot_list), seed_list, per_method, k_val=0 if no_val else None)
    check_writable(out, "--out folder")  # a read-only folder fails now, not after the first cell
    remove_stale_temporaries(out)  # half-written tables/plots of a killed sweep (it resumes in place)
    paths = _eval_datasets(data, several=test is not None or holdout is not None)
    bb = _load_backbone(backbone, device)
    store = _store(cache, device)
    results = ResultStore(out / "results.jsonl")
    for path in paths:
        pool = ex.require_labels(load_any(path, layout=layout, split=train_split))
        if holdout is not None:
            from kshot.data.holdout import split_holdout

            if test is not None:
                raise KshotError("--holdout draws the test split from DATA: pass it or --test, not both")
            pool, test_ds = split_holdout(pool, holdout, holdout_seed)
            console.print(f"hold-out: {len(test_ds)} of {len(pool) + len(test_ds)} images ({100 * holdout:.0f} % of "
                          f"each class, seed {holdout_seed}) are the test split")
        else:
            test_ds = _eval_test_split(path, test, layout, test_split)
        ex.preflight(names, per_method, pool.classnames, bb)  # every method checked before extraction/training
        spec = ex.prompt_spec_for(pool, templates, prompts)
        test_fs = ex.test_features(store, bb, test_ds, pool.classnames, what=f"test data {test or path}",
                                   model=f"the training pool {path}")
        inputs = FewShotInputs(pool.name, bb.spec, store.get(bb, pool, name="pool"), test_fs, pool.classnames,
                               ex.text_weights_for(bb, pool, spec), bb.logit_scale,
                               encoder=bb)
        records = run_fewshot(inputs, proto, results, progress=console.print)
        table = markdown_table(records)
        atomic_write_text(out / f"{pool.name}_table.md", table)
        plot_curves(records, out / f"{pool.name}_curves.png", f"{pool.name} — {bb.spec}")
        Console().print(table)
    console.print(f"results in {out}")


def _eval_datasets(data: Path, several: bool) -> list[Path]:
    """DATA, or the datasets of 'DATA/a,DATA/b' (a path that does not exist and holds commas), each checked."""
    from kshot.errors import DataError

    if data.exists() or "," not in str(data):
        return [data]
    paths = [Path(p.strip()) for p in str(data).split(",") if p.strip()]
    if several and len(paths) > 1:
        raise KshotError("--test / --holdout apply to one dataset: pass one DATA, or several without them")
    for p in paths:
        if not p.exists():
            raise DataError(f"dataset path not found: {p} (in the comma-separated list {data})")
    return paths


def _eval_test_split(data: Path, test: Optional[Path], layout: str, test_split: str):
    """The labelled test dataset of `kshot eval`; a missing split suggests --holdout."""
    from kshot.data.coop_source import load_any
    from kshot.errors import DataError

    try:
        return load_any(test or data, layout=layout if test is None else "auto", split=test_split)
    except DataError as e:
        if test is not None or test_split not in str(e):
            raise
        raise DataError(f"{e}; to hold out part of DATA as the test split pass --holdout 0.2 (seeded, stratified; "
                        "--seed N) or give --test DATASET") from None


def _csv(text: str, option: str, kind: type) -> list:
    """'1,2,4' -> [1, 2, 4]; a ConfigError naming `option` (`kshot.config.parse_list`)."""
    from kshot.config import parse_list

    return parse_list(text, option, kind)


@app.command()
def methods() -> None:
    """List registered methods with a one-line description.

    Example: kshot methods
    """
    from kshot.methods import METHODS

    table = Table(title="kshot methods")
    table.add_column("name")
    table.add_column("empty classes")
    table.add_column("description")
    for e in METHODS:
        empty = "text-only" if e.obj.supports_empty_classes else "error"
        if e.obj.transductive:
            empty += ", transductive"
        table.add_row(e.name, empty, e.description)
    Console().print(table)


@app.command()
def demo(
    out: Path = typer.Option(Path("kshot-out/demo"), "--out", "-o", help="Report folder."),
    all_methods: bool = typer.Option(False, "--all", help="Also run prompt-learning methods (slower)."),
    seed: int = typer.Option(1, help="Seed for the shots."),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Run the toolkit on the shipped toy world and tiny CLIP: zero-shot and every method at 1-16 shots.

    Example: kshot demo -o kshot-out/demo
    """
    from kshot.demo import run_demo

    run_demo(out, seed=seed, all_methods=all_methods, cache=cache)


@app.command()
def export(
    source: Optional[Path] = typer.Argument(None, help="A `kshot fit` folder or a continual checkpoint folder."),
    fmt: str = typer.Option("jittor", "--format", help="Output format: jittor (a jt.load-able .pkl), onnx or "
                            "torchscript (one graph uint8 images -> logits, labels.json + preprocess.json beside it)."),
    out: Path = typer.Option(..., "--out", "-o", help="File to write (.pkl, .onnx, .pt)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="Export this CLIP backbone's weights "
                                           "(JCLIP key names) instead of an artifact."),
) -> None:
    """Export a fitted method, a continual run's weights/masks/heads, or CLIP weights for Jittor users.

    Example: kshot export runs/lpp --format onnx -o deploy/model.onnx
    """
    from kshot.deploy.export import DEPLOY_FORMATS, export_deploy
    from kshot.errors import ConfigError
    from kshot.interop.export import FORMATS, export_jittor

    if fmt in DEPLOY_FORMATS:
        if source is None or backbone is not None:
            raise ConfigError(f"--format {fmt} exports a `kshot fit` folder: pass it (and no --backbone)")
        m, bb, _ = _artifact_method(source, "cpu")
        res = export_deploy(source, out, fmt, _inference_backbone(m, bb), m)
        console.print(f"wrote {res.path} ({fmt}, uint8 [N,3,H,W] -> {res.num_classes} logits; self-check max abs diff "
                      f"{res.check_diff:.1e}), {res.labels.name} and {res.preprocess.name} beside it")
        return
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; supported: {', '.join(FORMATS + DEPLOY_FORMATS)}")
    bb = _load_backbone(backbone, "cpu") if backbone else None
    res = export_jittor(out, source=source, backbone=bb)
    console.print(f"wrote {res.path} ({res.kind}, {res.arrays} arrays, {res.nbytes / 2**20:.1f} MiB); "
                  f"load it in Jittor with jt.load('{res.path.name}')")


@app.command()
def serve(
    roots: list[Path] = typer.Option(..., "--root", help="Data root the app may read (repeat); datasets are the "
                                     "folders under it."),
    runs: Path = typer.Option(Path("kshot-out/runs"), "--runs", help="Folder for the app's fits (and listed runs)."),
    artifacts: Optional[list[Path]] = typer.Option(None, "--artifact", "-a", help="Also offer this `kshot fit` run."),
    uploads: Optional[Path] = typer.Option(None, "--uploads", help="Folder for uploaded dataset zips (a data root "
                                           "too; default: beside --runs)."),
    more_backbones: Optional[list[str]] = typer.Option(None, "--offer-backbone", help="Also offer this backbone "
                                                       "spec for fits (repeat); --backbone is the default."),
    backbone: str = BackboneOpt,
    host: str = typer.Option("127.0.0.1", help="Interface to bind (default: this machine only)."),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port."),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """A local web app and JSON API (/docs): pick a dataset, fit, classify uploaded images.

    Example: kshot serve --root data --runs runs --port 8000
    """
    import uvicorn

    from kshot.features.cache import features_dir
    from kshot.serve import ServeConfig, create_app

    for p in [*roots, *(artifacts or [])]:
        if not p.is_dir():
            raise KshotError(f"{p}: no such folder")
    cfg = ServeConfig(list(roots), runs, features_dir(cache), backbone, preload=list(artifacts or []),
                      uploads=uploads, more_backbones=list(more_backbones or []))
    console.print(f"kshot serve on http://{host}:{port}/ (API docs at /docs); reading only under "
                  f"{', '.join(map(str, roots))}")
    uvicorn.run(create_app(cfg), host=host, port=port, log_level="warning")


def _mount_commands() -> None:
    from kshot.interop.cli import align

    app.command("align")(align)


_mount_commands()


SUBCOMMANDS = {
    "toyworld": ("kshot.toyworld.cli", "Generate, export and pretrain the toy world."),
    "continual": ("kshot.continual.cli", "PackNet and continual-learning baselines: run, eval, report."),
    "prompts": ("kshot.methods.prompting.cli", "Prompt-learning artifacts: explain learned context vectors."),
    "challenge": ("kshot.pipelines.cli", "The Jittor challenge pipelines end to end."),
    "bench": ("kshot.eval.cli", "The few-shot paper table over several datasets (toy, coop11, folders).\n\n"
              "Example: kshot bench --datasets toy --methods tip_adapter,lpp --shots 1,4 --seeds 1"),
    "data": ("kshot.data.cli", "The CoOp benchmark datasets: list, prepare from the official archives, check."),
    "lora": ("kshot.tuning.cli", "LoRA adapters of fitted runs: merge them into a plain backbone checkpoint."),
}


def _mount_subcommands() -> None:
    import importlib

    for name, (module, help_text) in SUBCOMMANDS.items():
        sub = importlib.import_module(module).app
        app.add_typer(sub, name=name, help=help_text)


_mount_subcommands()


def main() -> None:
    """The `kshot` console script: user mistakes become one `error: ...` line (see kshot.cli_errors)."""
    run_cli_main(app)


if __name__ == "__main__":
    main()
