"""`kshot prompts ...` (explain, search) and `run_base2new`, the body of `kshot eval --protocol base2new`.

Thin over the library: data -> cached features -> `kshot.eval.base2new` / `kshot.methods.prompting.search` / `explain`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import typer

from kshot.devices import device_option
from kshot.errors import KshotError
from kshot.outputs import atomic_write_text

log = logging.getLogger(__name__)
app = typer.Typer(rich_markup_mode=None, add_completion=False, no_args_is_help=True,
                  help="Prompt learning: interpret learned prompts, search ATPrompt attributes.")


def _backbone(spec: Any, device: str | None) -> Any:
    if not isinstance(spec, str):
        return spec
    import torch

    from kshot.backbones import load_backbone

    return load_backbone(spec, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _read(data: str | Path, split: str, layout: str) -> tuple[Any, Any]:
    """(Dataset, Benchmark or None): CoOp benchmark folders through their definitions, anything else by layout."""
    from kshot.data.sources import load_dataset
    from kshot.data.benchmarks import find_benchmark, load_benchmark

    path = Path(data)
    bench = find_benchmark(path.name) if layout == "auto" else None
    if bench is not None and (bench.split_file is None or (path / bench.split_file).is_file()):
        return load_benchmark(path, split, bench.name), bench
    ds = load_dataset(path, layout=layout, split=split)
    return ds, find_benchmark(ds.name)


def run_base2new(
    data: str | Path,
    *,
    methods: Sequence[str] | None = None,
    backbone: Any = "toy:clip",
    shots: int | Sequence[int] = 16,
    seeds: Sequence[int] = (1, 2, 3),
    test: str | Path | None = None,
    layout: str = "auto",
    train_split: str = "train",
    test_split: str = "test",
    templates: Sequence[str] | None = None,
    prompts: str | Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    preset: str | None = None,
    views: int = 0,
    augment: str = "tip",
    out: str | Path = "kshot-out/base2new",
    cache: str | Path | None = None,
    device: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Base-to-new protocol on a dataset from disk; writes `results_base2new.jsonl`, `<name>_base2new.md` and
    `<name>_base2new.png` under `out` (re-running skips finished cells).

    Args:
        data: dataset path (a CoOp benchmark folder such as `<DATA>/dtd`, a split file, an image folder, ...).
        methods: registered names (default: zeroshot, coop, atprompt).
        backbone: spec string or a loaded Backbone.
        shots: K (or several) shots per base class.
        test: labelled test dataset (default: `data`'s `test_split`).
        templates / prompts: zero-shot prompts (default: the benchmark's CoOp template).
        overrides: {method: {field: value}}; applied over the preset.
        preset: 'official' or 'seed000' schedules for coop/atprompt (`kshot.methods.prompting.presets`).
        views: augmented views per shot to cache (training draws one per epoch); 0 = plain features.

    Returns:
        {'records': [...], 'table': markdown, 'plot': Path, 'dataset': name}.
    """
    import numpy as np

    from kshot.eval.base2new import DEFAULT_METHODS, Base2NewInputs, Base2NewProtocol, draw_selection, markdown_table
    from kshot.eval.base2new import plot_bars, run_protocol, split_classes
    from kshot.methods import METHODS
    from kshot.eval.fewshot import ResultStore
    from kshot.experiment import preflight, test_features
    from kshot.features import AugmentPolicy, FeatureStore, default_cache_dir
    from kshot.features.extract import ExtractConfig
    from kshot.methods.prompting.presets import preset_overrides
    from kshot.text.classifier import build_text_classifier
    from kshot.text.templates import PromptSpec, dataset_template, load_prompt_file

    names = list(methods or DEFAULT_METHODS)
    ks = (shots,) if isinstance(shots, int) else tuple(int(k) for k in shots)
    pool, bench = _read(data, train_split, layout)
    test_ds = _read(test, test_split, "auto")[0] if test is not None else _read(data, test_split, layout)[0]
    test_where = f"test data {test if test is not None else data}"
    per: dict[str, dict[str, Any]] = {}
    for m in names:
        o = dict(preset_overrides(preset, pool.name, m)) if preset else {}
        takes_dataset = "dataset" in {f.name for f in dataclasses.fields(METHODS.get(m).config_cls)}
        if takes_dataset and bench is not None and not o.get("dataset"):
            o["dataset"] = bench.name  # e.g. ATPrompt: the paper's attributes for this dataset, unless overridden
        o.update((overrides or {}).get(m, {}))
        per[m] = o
    bb = _backbone(backbone, device)
    preflight(names, per, pool.classnames, bb, images=True)  # every method, base and new names, before any work
    store = FeatureStore(Path(cache) if cache else default_cache_dir(), extract=ExtractConfig(device=device))
    base, _ = split_classes(pool.num_classes)
    labels = pool.labels
    draws = [draw_selection(labels, base, k, s) for k in ks for s in seeds]
    used = np.unique(np.concatenate([np.concatenate(d) for d in draws])) if draws else np.zeros(0, np.int64)
    policy = AugmentPolicy(augment, views) if views else AugmentPolicy()
    feats = store.get(bb, pool.subset(used), policy, name=f"{pool.name}/shots")
    pos = {int(i): p for p, i in enumerate(used)}
    test_fs = test_features(store, bb, test_ds, pool.classnames, name=f"{pool.name}/test", what=test_where)
    if prompts is not None:
        spec = load_prompt_file(prompts)
    elif templates:
        spec = PromptSpec(templates=list(templates))
    else:
        spec = PromptSpec(templates=[bench.template if bench else dataset_template(pool.name)])
    tw = build_text_classifier(bb, pool.classnames, spec, pool.class_domains)
    inputs = Base2NewInputs(pool.name, bb, labels, lambda idx: feats.subset([pos[int(i)] for i in idx]), test_fs,
                            pool.classnames, tw, bb.logit_scale, pool_images=lambda idx: pool.subset(idx),
                            test_features_for=lambda tuned: test_features(store, tuned, test_ds, pool.classnames,
                                                                          name=f"{pool.name}/test", what=test_where))
    out = Path(out)
    records = run_protocol(inputs, Base2NewProtocol(names, ks, tuple(seeds), per),
                           ResultStore(out / "results_base2new.jsonl"), progress)
    table = markdown_table(records)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{pool.name}_base2new.md", table)
    plot = plot_bars(records, out / f"{pool.name}_base2new.png", f"{pool.name} base-to-new — {inputs.spec}")
    return {"records": records, "table": table, "plot": plot, "dataset": pool.name}


@app.command()
def explain(
    artifact: Path = typer.Argument(..., help="`kshot fit` folder of a prompt method."),
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="Backbone spec (default: the artifact's)."),
    topk: int = typer.Option(5, "--topk", min=1, help="Nearest vocabulary words per learned vector."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the explanation as JSON."),
    device: Optional[str] = typer.Option(None, "--device", callback=device_option, help="cpu, cuda, ..."),
) -> None:
    """Nearest vocabulary words of each learned context vector (and ATPrompt's attributes and search weights).

    Example: kshot prompts explain runs/atp --topk 5
    """
    from kshot.methods.prompting.interpret import explain as explain_method
    from kshot.methods.prompting.interpret import format_explanation, load_prompt_method

    method = load_prompt_method(artifact, _backbone(backbone, device) if backbone else None, device)
    if not hasattr(method, "vectors_"):
        raise KshotError(f"{artifact}: method {method.name!r} has no learned prompts to explain")
    expl = explain_method(method, topk)
    typer.echo(format_explanation(expl))
    if json_out is not None:
        json_out.write_text(json.dumps(expl, indent=2))


@app.command()
def search(
    data: Path = typer.Argument(..., help="Dataset with a labelled training pool."),
    candidates: Path = typer.Option(..., "--candidates", help="Text file of candidate attribute words."),
    backbone: str = typer.Option("toy:clip", "--backbone", "-b", help="Backbone spec."),
    shots: int = typer.Option(16, "--shots", "-k", help="Shots per (base) class."),
    seed: int = typer.Option(1, help="Sampling and training seed."),
    all_classes: bool = typer.Option(False, help="Search on all classes instead of the base half (paper: base)."),
    epochs: int = typer.Option(40, help="Search epochs (official 40)."),
    max_size: int = typer.Option(3, help="Largest attribute combination."),
    layout: str = typer.Option("auto", help="Data layout."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the result as JSON."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Feature cache folder."),
    device: Optional[str] = typer.Option(None, "--device", callback=device_option, help="cpu, cuda, ..."),
) -> None:
    """ATPrompt's differentiable attribute search over the words in --candidates; prints the weights.

    Example: kshot prompts search data/toy --candidates words.txt -k 4
    """
    import numpy as np

    from kshot.eval.base2new import draw_selection, split_classes
    from kshot.features import FeatureStore
    from kshot.features.cache import features_dir
    from kshot.features.extract import ExtractConfig
    from kshot.methods.prompting.search import SearchConfig, read_candidates, search_attributes

    words = read_candidates(candidates)
    pool, _ = _read(data, "train", layout)
    classes = np.arange(pool.num_classes) if all_classes else split_classes(pool.num_classes)[0]
    shot_idx, val_idx = draw_selection(pool.labels, classes, shots, seed)
    bb = _backbone(backbone, device)
    store = FeatureStore(features_dir(cache), extract=ExtractConfig(device=device))
    train = store.get(bb, pool.subset(shot_idx), name="search/train")
    val = store.get(bb, pool.subset(val_idx), name="search/val") if len(val_idx) else None
    res = search_attributes(bb, pool.classnames[: len(classes)], train, val, words,
                            SearchConfig(epochs=epochs, max_size=max_size), seed=seed)
    for combo, w in res.ranking():
        typer.echo(f"{w:.4f}  {', '.join(combo)}")
    typer.echo(f"chosen: {', '.join(res.chosen)}")
    if json_out is not None:
        json_out.write_text(json.dumps(res.to_dict(), indent=2))
