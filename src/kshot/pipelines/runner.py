"""`run_challenge`: the Jittor challenge end to end — shots, features, the configured pipeline, result.txt, report.

1. Read the pool (train.txt) and the test folder with one class file (classes.txt for the A round, classes_b.txt for
   the B round, or the one given).
2. Pick `shots` images per class: the user's shots file, or a seeded draw (`sample_k_shot`), or the first K per label
   (the official baseline); save the pick as `shots.txt` (the train.txt format) so it can be shared and reused.
3. Draw `estimate_per_class` other pool images per seen class: they only *estimate* accuracy before submitting.
4. Fit the stages in config order (features are extracted once per backbone and cached), score the test folder with
   the output stage, check the predictions are not degenerate, write `result.txt` + `result.zip` and validate them
   with `kshot.eval.result_file.read_result_txt`.
5. Write `report.json` / `report.md` (`kshot.pipelines.report`) and the resolved config.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kshot.backbones.base import Backbone
from kshot.data.challenge import pick_classes_file
from kshot.data.dataset import Dataset
from kshot.errors import ConfigError, DataError
from kshot.features.augment import AugmentPolicy
from kshot.features.cache import FeatureStore, default_cache_dir
from kshot.features.extract import ExtractConfig
from kshot.outputs import RunFolder, atomic_write_text
from kshot.pipelines.cascade import CascadeStage
from kshot.pipelines.config import (
    CascadeStageConfig,
    EnsembleStageConfig,
    MethodStageConfig,
    PipelineConfig,
    SpecialistConfig,
    root_backbone,
    tunes_image_encoder,
)
from kshot.pipelines.configfile import config_to_dict, load_config
from kshot.pipelines.groups import ClassInfo
from kshot.pipelines.params import parameter_report
from kshot.pipelines.report import global_top5, measure, peak_host_mb, stage_metrics, trace_metrics, write_report
from kshot.pipelines.specialist import SpecialistStage
from kshot.pipelines.stages import EnsembleStage, MethodStage, Stage
from kshot.pipelines.workspace import ChallengeData, Workspace

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """How to run a pipeline (what is not part of the pipeline itself).

    Attributes:
        out: output folder (result.txt, result.zip, shots.txt, report.json/.md, config.yaml, artifacts/).
        split: test split: 'testA', 'testB' or 'test' (the only test folder present).
        classes_file: class file override (default: classes.txt for testA, classes_b.txt otherwise).
        test_dir: test folder override (default root/TestSetA or root/TestSetB).
        shots_file: use this shots file if it exists, else write the pick there too.
        test_labels: hidden test labels (`<relpath> <label>`, matched by file name) to score the test folder — the
            offline replica's test_labels.txt.
        tune_on_pool: let methods tune on the estimate images (outside the 4-shot rule; the report says so).
        force: write result.txt even if the predictions look degenerate.
        cache_dir: feature cache (default $KSHOT_CACHE or ~/.cache/kshot).
        device: 'cpu', 'cuda', ... (default CUDA when available).
        batch_size, workers: feature extraction settings.
        progress: progress bars while extracting.
        backbones: pre-loaded backbones by alias or spec (used instead of loading; tests and notebooks).
        save_artifacts: save each method stage's fitted artifact under out/artifacts/<stage>/.
        on_missing: train.txt lines whose image is missing: 'error' (default) or 'skip' (listed in the report).
        overwrite: replace a finished run in `out` (the CLI's --overwrite; the library replaces by default). The run
            is written to a staging folder either way and swapped in only when it succeeded.
    """

    out: Path
    split: str = "test"
    classes_file: str | None = None
    test_dir: Path | None = None
    shots_file: Path | None = None
    test_labels: Path | None = None
    tune_on_pool: bool = False
    force: bool = False
    cache_dir: Path | None = None
    device: str | None = None
    batch_size: int = 256
    workers: int | None = None
    progress: bool = False
    backbones: Mapping[str, Backbone] = field(default_factory=dict)
    save_artifacts: bool = True
    on_missing: str = "error"
    overwrite: bool = True


@dataclass
class RunResult:
    """Outcome of a run: the submission (None when refused), its rows and the report."""

    result_txt: Path | None
    filenames: list[str]
    top5: np.ndarray
    report: dict[str, Any]
    report_path: Path
    refused: str | None = None


# ------------------------------------------------------------------------------------------------------- data


def load_data(cfg: PipelineConfig, root: Path, opts: RunOptions) -> tuple[ChallengeData, dict[str, Any]]:
    """Pool, test folder, shots and estimate images; also returns facts for the report."""
    from kshot.data.challenge import read_challenge

    root = Path(root)
    cfile = pick_classes_file(root, opts.split, opts.classes_file)
    pool = read_pool(root, cfile, opts.on_missing)
    test = read_challenge(root, opts.split, classes_file=cfile, image_root=opts.test_dir)
    shots, source = pick_shots(cfg, pool, opts)
    if opts.shots_file is not None and not Path(opts.shots_file).is_file():
        _write_shots(pool, shots, Path(opts.shots_file))
    _write_shots(pool, shots, opts.out / "shots.txt")
    c = len(test.classnames)
    counts = np.bincount(pool.labels[shots], minlength=c)
    seen = counts > 0
    estimate = np.zeros(0, dtype=np.int64)
    if cfg.estimate_per_class > 0:
        from kshot.data.fewshot import sample_val

        estimate = np.asarray(sample_val(pool.labels, shots, cfg.estimate_per_class, cfg.seed,
                                         classes=np.flatnonzero(seen).tolist()), dtype=np.int64)
    info = ClassInfo(num_classes=c, domains=pool.class_domains or test.class_domains, seen=seen)
    labels = read_test_labels(opts.test_labels, test) if opts.test_labels else None
    data = ChallengeData(pool=pool, test=test, shots=shots, estimate=estimate, info=info, test_labels=labels)
    facts = {"root": str(root), "classes_file": str(cfile), "test_dir": str(test.root), "num_classes": c,
             "seen_classes": int(seen.sum()), "unseen_classes": int((~seen).sum()), "pool_images": len(pool),
             "shots": len(shots), "shots_source": source, "shots_per_class_max": int(counts.max(initial=0)),
             "shots_per_class_min": int(counts[seen].min(initial=0)), "estimate_images": len(estimate),
             "test_images": len(test), "test_labels": None if labels is None else int((labels >= 0).sum()),
             "skipped_train_items": len(pool.skipped)}
    return data, facts


def read_pool(root: Path, classes_file: Path, on_missing: str = "error") -> Dataset:
    """train.txt as a Dataset; a doubly nested `TrainSet/TrainSet/` (a common unzip accident) is accepted with a
    warning when the listed files are found there."""
    from kshot.data.challenge import read_challenge
    from kshot.data.paths import MissingFilesError

    try:
        return read_challenge(root, "train", classes_file=classes_file, on_missing=on_missing)
    except MissingFilesError:
        nested = root / "TrainSet" / "TrainSet"
        if not nested.is_dir():
            raise
        log.warning("%s: the images are under TrainSet/TrainSet/; reading them from there", root)
        return read_challenge(root, "train", classes_file=classes_file, image_root=root / "TrainSet",
                              on_missing=on_missing)


def pick_shots(cfg: PipelineConfig, pool: Dataset, opts: RunOptions) -> tuple[np.ndarray, str]:
    """Indices into the pool: from the user's shots file, else seeded or first-K per class."""
    from kshot.data.fewshot import read_shots_file, sample_k_shot

    labels = pool.labels
    if opts.shots_file is not None and Path(opts.shots_file).is_file():
        idx = np.asarray(read_shots_file(opts.shots_file, pool), dtype=np.int64)
        counts = np.bincount(labels[idx], minlength=pool.num_classes)
        over = np.flatnonzero(counts > cfg.shots)
        if len(over):
            names = ", ".join(f"{pool.classnames[c]} ({counts[c]})" for c in over[:5])
            raise DataError(f"{opts.shots_file}: the rule allows {cfg.shots} images per class, but {len(over)} classes "
                            f"have more: {names}")
        return idx, f"file {opts.shots_file}"
    if cfg.shot_pick == "first":
        out, taken = [], np.zeros(pool.num_classes, dtype=np.int64)
        for i, y in enumerate(labels.tolist()):
            if y >= 0 and taken[y] < cfg.shots:
                out.append(i)
                taken[y] += 1
        short = np.flatnonzero((taken > 0) & (taken < cfg.shots))
        if len(short) and not cfg.allow_fewer:
            raise DataError(f"{len(short)} classes have fewer than {cfg.shots} pool images (e.g. "
                            f"{pool.classnames[short[0]]}: {taken[short[0]]}); set allow_fewer: true")
        return np.asarray(sorted(out, key=lambda i: (labels[i], i)), dtype=np.int64), "first K per class in train.txt"
    idx = sample_k_shot(labels, cfg.shots, cfg.seed, allow_fewer=cfg.allow_fewer)
    return np.asarray(idx, dtype=np.int64), f"seeded draw (seed {cfg.seed})"


def _write_shots(pool: Dataset, shots: np.ndarray, path: Path) -> None:
    from kshot.data.fewshot import write_shots_file

    path.parent.mkdir(parents=True, exist_ok=True)
    write_shots_file(pool, shots, path)


def read_test_labels(path: Path | str, test: Dataset) -> np.ndarray:
    """Labels of the test items from a `<relpath> <label>` file matched by file name; -1 where not listed."""
    from kshot.data.listfile import parse_list_file

    by_name = {Path(e.path).name: e.label for e in parse_list_file(path)}
    labels = np.asarray([by_name.get(Path(it.path).name, -1) for it in test.items], dtype=np.int64)
    if (labels >= test.num_classes).any():
        raise DataError(f"{path}: label {int(labels.max())} is outside the {test.num_classes} classes")
    if (labels < 0).all():
        raise DataError(f"{path}: names none of the {len(test)} images in {test.root}")
    return labels


# ----------------------------------------------------------------------------------------------------- stages


def build_stage(name: str, cfg: Any) -> Stage:
    if isinstance(cfg, MethodStageConfig):
        return MethodStage(name, cfg)
    if isinstance(cfg, EnsembleStageConfig):
        return EnsembleStage(name, cfg)
    if isinstance(cfg, CascadeStageConfig):
        return CascadeStage(name, cfg)
    if isinstance(cfg, SpecialistConfig):
        return SpecialistStage(name, cfg)
    raise ConfigError(f"stage {name!r}: unsupported stage config {type(cfg).__name__}")


def extract_features(ws: Workspace, records: list[dict[str, Any]]) -> None:
    """Extract (or load from cache) every feature the method stages will read, timed per backbone."""
    needs: dict[str, set] = {}
    for st in ws.config.stages.values():
        if isinstance(st, MethodStageConfig) and st.backbone in ws.config.backbones:  # tuned ones: when they exist
            n = needs.setdefault(st.backbone, set())
            n.add(("shots", st.augment, st.views))
            if not tunes_image_encoder(st):  # a tuning stage scores its tuned backbone's features, not these
                n.add(("estimate",))
                n.add(("test",))
    for alias, items in needs.items():
        rec: dict[str, Any] = {"name": f"features:{alias}", "kind": "features", "backbone": ws.spec_of(alias)}
        with measure(rec, "fit"):
            for item in sorted(items, key=str):
                if item[0] == "shots":
                    ws.shot_features(alias, AugmentPolicy(item[1], item[2], seed=ws.config.seed) if item[2]
                                     else AugmentPolicy())
                elif item[0] == "estimate" and len(ws.data.estimate):
                    ws.estimate_features(alias)
                elif item[0] == "test":
                    ws.test_features(alias)
        records.append(rec)


def text_uses(cfg: PipelineConfig, stages: Mapping[str, Stage]) -> dict[str, set]:
    """Backbone alias -> distinct (class group, prompts) text classifiers encoded with it (for the by-use count)."""
    uses: dict[str, set] = {}
    for st in stages.values():
        if isinstance(st, MethodStage) and st.method_cls.needs_text:
            prompts = (st.cfg.prompts or cfg.prompts).key()
            # a stage that tuned the text tower predicts with the tuned tower's classifier (CLIP-LoRA)
            alias = st.features_alias if "text" in st.method_cls.trains_encoders else st.cfg.backbone
            uses.setdefault(alias, set()).add((tuple(st.classes.tolist()), prompts))
        if isinstance(st, SpecialistStage) and st.cfg.head_init == "text":
            uses.setdefault(st.cfg.model, set()).add((tuple(st.classes.tolist()), cfg.prompts.key()))
    return uses


def degenerate_reason(top5: np.ndarray, num_classes: int, top5_share: float, top1_share: float) -> str | None:
    """Why predictions look degenerate (the same top-5 for (nearly) every image; one class taking most top-1s), or
    None. JCLIP issue #2: a non-converged scikit-learn solver gave every test image the same top-5."""
    n = len(top5)
    if n < 2:
        return None
    _, counts = np.unique(top5, axis=0, return_counts=True)
    share = counts.max() / n
    if share >= top5_share:
        return (f"{share:.0%} of the {n} test images have the same top-5 (threshold {top5_share:.0%}); a model that "
                "did not converge or a broken feature pipeline gives this")
    if num_classes >= 10 and n >= 20:
        top1 = np.bincount(top5[:, 0], minlength=num_classes)
        share1 = top1.max() / n
        if share1 >= top1_share:
            return (f"class {int(top1.argmax())} is the top-1 of {share1:.0%} of the {n} test images "
                    f"(threshold {top1_share:.0%})")
    return None


# ---------------------------------------------------------------------------------------------------------- run


def run_challenge(config: PipelineConfig | str | Path, root: Path | str, options: RunOptions) -> RunResult:
    """Run a pipeline on a challenge root and write the submission and the report (see the module docstring).

    Raises:
        DataError: bad data, or degenerate predictions without `options.force` (the report is written first).
        ConfigError: a bad pipeline config.
    """
    cfg = config if isinstance(config, PipelineConfig) else load_config(config)
    folder = RunFolder(options.out, overwrite=options.overwrite, marker="report.json", what="challenge run")
    folder.check()
    with folder as stage:
        res = _run(cfg, Path(root), replace(options, out=stage), Path(options.out))
        if res.refused is not None and not options.force:
            kept = folder.keep_as(folder.path.with_name(folder.path.name + ".refused"))
            raise DataError(f"refusing to write result.txt: {res.refused}. Inspect {kept / 'report.json'} ("
                            f"{folder.path} is unchanged); pass --force to write it anyway")
    return res


def _run(cfg: PipelineConfig, root: Path, options: RunOptions, final: Path) -> RunResult:
    """The run of `run_challenge`, written into `options.out` (the staging folder); paths in the report and the
    result name `final`."""
    t0 = time.perf_counter()
    out = Path(options.out)
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    data, facts = load_data(cfg, root, options)
    if options.tune_on_pool and len(data.estimate) == 0:
        raise ConfigError("--tune-on-pool needs estimate images (estimate_per_class > 0 and pool images left over)")
    store = FeatureStore(options.cache_dir or default_cache_dir(),
                         extract=ExtractConfig(batch_size=options.batch_size, num_workers=options.workers,
                                               device=str(device), progress=options.progress))
    ws = Workspace(cfg, data, store, device, loaded=dict(options.backbones), tune_on_pool=options.tune_on_pool)
    records: list[dict[str, Any]] = []
    extract_features(ws, records)
    stages: dict[str, Stage] = {}
    for name, st_cfg in cfg.stages.items():
        stage = build_stage(name, st_cfg)
        log.info("fitting stage %s (%s)", name, stage.kind)
        with measure(stage.record, "fit"):
            stage.fit(ws, stages)
        stages[name] = stage
    output = stages[cfg.output]
    with measure(output.record, "submit"):
        test_scores = output.scores("test")
        top5 = global_top5(test_scores, output.classes, data.num_classes)
    filenames = [it.path for it in data.test.items]
    refused = degenerate_reason(top5, data.num_classes, cfg.degenerate_top5_share, cfg.degenerate_top1_share)
    result_txt = None
    if refused is None or options.force:
        write_submission(out, filenames, top5, data)
        result_txt = final / "result.txt"
    report = build_report(cfg, ws, stages, records, facts, options, time.perf_counter() - t0, result_txt, refused)
    if options.save_artifacts:
        for name, st in stages.items():
            if isinstance(st, MethodStage) and st.method is not None:
                st.method.save(out / "artifacts" / name)
    _write_config(cfg, out / "config.yaml")
    write_report(report, out)
    return RunResult(result_txt, filenames, top5, report, final / "report.json", refused)


def write_submission(out: Path, filenames: list[str], top5: np.ndarray, data: ChallengeData) -> Path:
    """Write result.txt + result.zip and validate them against the test folder and the class count."""
    from kshot.eval.result_file import read_result_txt, write_result_txt

    path = write_result_txt(out / "result.txt", filenames, top5, zip_it=True)
    read_result_txt(path, num_classes=data.num_classes, test_dir=data.test.root)
    return path


def build_report(cfg: PipelineConfig, ws: Workspace, stages: Mapping[str, Stage], feature_records: list[dict],
                 facts: dict[str, Any], opts: RunOptions, total_s: float, result_txt: Path | None,
                 refused: str | None) -> dict[str, Any]:
    data = ws.data
    stage_records = []
    for st in stages.values():
        rec = dict(st.record)
        rec["metrics"] = {split: stage_metrics(st, data, split) for split in ("estimate", "test")}
        if isinstance(st, CascadeStage):
            if data.labels("estimate") is not None and len(data.estimate):
                st.scores("estimate")
            rec["trace"] = {split: trace_metrics(st, data, split) for split in ("estimate", "test")}
        rec["params"] = st.param_counts()
        stage_records.append(rec)
    compliant = not opts.tune_on_pool and facts["shots_per_class_max"] <= 4
    detail = ("hyper-parameters tuned on pool images (--tune-on-pool): OUTSIDE the 4-shot rule" if opts.tune_on_pool
              else f"{facts['shots_per_class_max']} shots per class at most ({facts['shots_source']}); "
                   "hyper-parameters chosen within the shots; pool images only estimate accuracy")
    pretrained = _pretrained_components(ws, stages)
    gpu = round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None
    return {
        "pipeline": cfg.name, "description": cfg.description, "config_source": cfg.source,
        "rule": {"compliant": bool(compliant), "detail": detail, "tune_on_pool": bool(opts.tune_on_pool)},
        "data": facts, "device": str(ws.device), "total_s": round(total_s, 3), "peak_host_mb": peak_host_mb(),
        "peak_gpu_mb": gpu, "stages": feature_records + stage_records,
        "parameters": parameter_report(pretrained, stages, text_uses(cfg, stages)),
        "result_txt": None if result_txt is None else str(result_txt),
        "result_zip": None if result_txt is None else str(result_txt.with_suffix(".zip")),
        "refused": refused, "forced": bool(refused and opts.force),
        "skipped_images": [list(s) for s in ws.skipped],
    }


def _pretrained_components(ws: Workspace, stages: Mapping[str, Stage]) -> dict[str, Backbone]:
    """Backbones used as loaded at prediction time: those of method stages and of specialists whose encoder was not
    fine-tuned (a fine-tuned copy is counted by its stage instead). A stage's tuned backbone (CLIP-LoRA) counts as
    the backbone it was tuned from; its adapters are counted by the tuning stage."""
    used: dict[str, Backbone] = {}
    for st in stages.values():
        if isinstance(st, MethodStage):
            root = root_backbone(ws.config, st.cfg.backbone)
            used.setdefault(root, ws.backbone(root))
            used[st.cfg.backbone] = ws.backbone(root)
        elif isinstance(st, SpecialistStage) and not st.tuned:
            used[st.cfg.model] = ws.backbone(st.cfg.model)
    return used


def _write_config(cfg: PipelineConfig, path: Path) -> None:
    import yaml

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))
