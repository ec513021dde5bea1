"""PyTorch ↔ Jittor alignment report (`kshot align`): the same CLIP and heads run in both, compared stage by stage.

The Jittor reproduction READMEs (fcos_jittor, RepVGG-Jittor, Jittor_DKD, PackNet-Jittor, Jittor_ATPrompt; see
reference/challenge-and-seeds.md §C-D) show alignment as side-by-side PyTorch/Jittor tables of final numbers. This
report gives those tables and the per-stage numbers behind them: for image features, text features, zero-shot
logits and each exported head, the max/mean absolute difference, the max difference relative to the largest PyTorch
value, top-1/top-5 agreement (same arg-max; same set of top-5 ids), shapes and wall-clock time of both paths, plus
versions, devices and a one-line verdict.

Both paths share every step that is not model arithmetic (tokenisation, preprocessing, prompt-ensemble averaging),
so differences come from the forward and the heads only. A head is measured twice: end to end (each path's own
image features) and on the same (PyTorch) features, which isolates the head.
"""

from __future__ import annotations

import json
import logging
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kshot.errors import ConfigError

log = logging.getLogger(__name__)

FEATURE_RTOL = 1e-4
"""Verdict threshold: max |PyTorch − Jittor| of features over max |PyTorch feature| (the issue's 1e-4)."""
TOPK = 5


# ---------------------------------------------------------------------------------------------------- metrics
def compare(reference: torch.Tensor, other: torch.Tensor, topk: bool = False) -> dict[str, Any]:
    """Differences of `other` from `reference` (same shape): max/mean abs, max relative to max |reference|, and
    with `topk` the top-1 / top-5 agreement of rows (fractions in [0, 1])."""
    a, b = reference.detach().double().cpu(), other.detach().double().cpu()
    if a.shape != b.shape:
        raise ConfigError(f"cannot compare shapes {list(a.shape)} and {list(b.shape)}")
    diff = (a - b).abs()
    scale = float(a.abs().max()) if a.numel() else 0.0
    row: dict[str, Any] = {
        "shape": list(a.shape),
        "max_abs": float(diff.max()) if diff.numel() else 0.0,
        "mean_abs": float(diff.mean()) if diff.numel() else 0.0,
    }
    row["max_rel"] = row["max_abs"] / scale if scale > 0 else row["max_abs"]
    if topk and a.ndim == 2 and a.shape[0]:
        k = min(TOPK, a.shape[1])
        row["top1_agree"] = float((a.argmax(1) == b.argmax(1)).double().mean())
        same = [set(x.tolist()) == set(y.tolist()) for x, y in zip(a.topk(k, 1).indices, b.topk(k, 1).indices)]
        row["top5_agree"] = float(np.mean(same))
        row["k"] = k
    return row


def _accuracy(logits: torch.Tensor, labels: torch.Tensor | None) -> float | None:
    if labels is None or len(labels) == 0 or bool((labels < 0).any()):
        return None
    return float((logits.argmax(1).cpu() == labels.cpu()).double().mean())


def class_weights(text_features: torch.Tensor, owner: torch.Tensor, num_classes: int) -> torch.Tensor:
    """CLIP's prompt ensemble: normalise each prompt feature, average per class, renormalise -> [C, D]."""
    emb = F.normalize(text_features.float(), dim=-1)
    sums = torch.zeros(num_classes, emb.shape[1]).index_add_(0, owner, emb)
    return F.normalize(sums, dim=-1)


def _prompts(classnames: Sequence[str], templates: Any) -> tuple[list[str], torch.Tensor]:
    from kshot.text.templates import DEFAULT_TEMPLATE, PromptSpec

    if isinstance(templates, PromptSpec):
        spec = templates
    else:
        spec = PromptSpec(templates=list(templates or [DEFAULT_TEMPLATE]))
    sentences, owner = [], []
    for c, name in enumerate(classnames):
        for s in spec.prompts_for(name):
            sentences.append(s)
            owner.append(c)
    return sentences, torch.tensor(owner, dtype=torch.long)


# ---------------------------------------------------------------------------------------------------- artifacts
def _method_from_export(path: Path) -> Any:
    """A torch Method rebuilt from a `method/1` export (.pkl)."""
    from kshot.jittor_backend.artifact import read_method_artifact
    from kshot.methods import METHODS  # importing kshot.methods registers every method

    art = read_method_artifact(path)
    method = METHODS.get(art.method)(**art.config)
    method.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in art.arrays.items()}, art.meta)
    method.fitted_ = True
    return method


def prepare_artifact(source: str | Path, folder: Path) -> tuple[Any, Path]:
    """(torch Method, Jittor .pkl) for a `kshot fit` folder (exported into `folder`) or an exported .pkl."""
    from kshot.interop.export import method_to_jittor_dict, save_jittor_artifact
    from kshot.methods import load

    src = Path(source)
    if src.is_dir():
        method = load(src)
        pkl = folder / f"{src.name or 'artifact'}-{method.name}.pkl"
        save_jittor_artifact(method_to_jittor_dict(method), pkl)
        return method, pkl
    if src.is_file():
        return _method_from_export(src), src.resolve()
    raise ConfigError(f"artifact {src}: no such `kshot fit` folder or exported .pkl")


# ---------------------------------------------------------------------------------------------------- report
def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    with torch.no_grad():
        out = fn(*args)
    return out, time.perf_counter() - t0


def _batched(fn: Any, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch]).float().cpu() for i in range(0, len(x), batch)])


def _versions(session: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                           "jittor": session.info.get("jittor"), "jittor_python": session.python}
    try:
        import open_clip

        out["open_clip"] = open_clip.__version__
    except ImportError:
        pass
    return out


def align_report(backbone: Any, images: torch.Tensor, classnames: Sequence[str], templates: Any = None,
                 artifact: str | Path | Sequence[str | Path] | None = None, *, labels: torch.Tensor | None = None,
                 session: Any = None, python: str | None = None, device: str = "cpu",
                 rtol: float = FEATURE_RTOL) -> dict[str, Any]:
    """Run the PyTorch and Jittor paths of `backbone` (and of exported heads) on the same inputs and compare.

    Args:
        backbone: a CLIP Backbone (open_clip CLIP or toy:clip).
        images: preprocessed images [N, 3, S, S].
        classnames: C class names; templates: prompt templates with '{}' (or a PromptSpec; default CLIP's).
        artifact: one or more `kshot fit` folders or exported `method/1` .pkl files (heads compared too).
        labels: optional [N] labels in [0, C): adds both paths' accuracies.
        session: an open `JittorSession` on this backbone to reuse (else one is started and closed here).
        python, device: for a new session (see `JittorSession`).
        rtol: feature tolerance of the verdict (relative to the largest PyTorch feature value).

    Returns:
        A JSON-able dict: 'stages' (one row per stage, `compare` fields + 'torch_s'/'jittor_s'), 'accuracy',
        'sizes', 'versions', 'devices', 'jittor_startup_s', 'verdict' and 'aligned'.
    """
    from kshot.jittor_backend.client import JittorSession

    if not backbone.has_text:
        raise ConfigError(f"backbone {backbone.spec!r} has no text tower; `kshot align` compares CLIP models")
    if images.ndim != 4 or len(images) == 0:
        raise ConfigError(f"images must be a non-empty [N, 3, S, S] tensor, got {list(images.shape)}")
    if not classnames:
        raise ConfigError("align needs at least one class name")
    sources = [] if artifact is None else [artifact] if isinstance(artifact, (str, Path)) else list(artifact)
    own = session is None
    session = JittorSession(backbone, python=python, device=device) if own else session
    dev = backbone.device
    images = images.float()
    sentences, owner = _prompts(classnames, templates)
    tokens = backbone.tokenize(sentences)
    scale = float(backbone.logit_scale)
    stages: list[dict[str, Any]] = []
    accuracy: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        session.start()
        startup = session.info.get("wall_seconds", time.perf_counter() - t0)
        img_t, ts = _timed(lambda x: _batched(backbone.encode_image, x.to(dev)), images)
        img_j, js = _timed(session.encode_image, images.cpu())
        stages.append({"stage": "image features", **compare(img_t, img_j), "torch_s": ts, "jittor_s": js})
        txt_t, ts = _timed(lambda x: _batched(backbone.encode_text, x.to(dev)), tokens)
        txt_j, js = _timed(session.encode_text, tokens.cpu())
        stages.append({"stage": "text features", **compare(txt_t, txt_j), "torch_s": ts, "jittor_s": js})
        w_t, w_j = class_weights(txt_t, owner, len(classnames)), class_weights(txt_j, owner, len(classnames))
        lg_t, ts = _timed(lambda a, w: scale * F.normalize(a, dim=-1) @ w.T, img_t, w_t)
        lg_j, js = _timed(session.clip_logits, img_j, w_j, scale)
        stages.append({"stage": "zero-shot logits", **compare(lg_t, lg_j, topk=True), "torch_s": ts, "jittor_s": js})
        accuracy.append({"what": "zero-shot", "torch": _accuracy(lg_t, labels), "jittor": _accuracy(lg_j, labels)})
        f_t, f_j = F.normalize(img_t, dim=-1), F.normalize(img_j, dim=-1)
        with tempfile.TemporaryDirectory(prefix="kshot-align-") as tmp:
            for src in sources:
                method, pkl = prepare_artifact(src, Path(tmp))
                h_t, ts = _timed(lambda f: method.logits(f.to(dev)).float().cpu(), f_t)
                h_j, js = _timed(session.head_logits, pkl, f_j)
                h_same, _ = _timed(session.head_logits, pkl, f_t)
                name = method.name
                stages.append({"stage": f"{name} head", **compare(h_t, h_j, topk=True), "torch_s": ts,
                               "jittor_s": js, "artifact": str(src)})
                stages.append({"stage": f"{name} head (same features)", **compare(h_t, h_same, topk=True),
                               "artifact": str(src)})
                accuracy.append({"what": name, "torch": _accuracy(h_t, labels), "jittor": _accuracy(h_j, labels)})
        report = {
            "backbone": backbone.spec,
            "stages": stages,
            "accuracy": [a for a in accuracy if a["torch"] is not None],
            "sizes": {"images": len(images), "image_size": int(images.shape[-1]), "classes": len(classnames),
                      "prompts": len(sentences), "embed_dim": int(img_t.shape[1]),
                      "parameters": sum(p.numel() for p in backbone.model.parameters())},
            "versions": _versions(session),
            "devices": {"torch": str(dev), "jittor": session.device},
            "jittor_startup_s": startup,
            "rtol": rtol,
        }
    finally:
        if own:
            session.close()
    report.update(verdict(report))
    log.info("align %s: %s", backbone.spec, report["verdict"])
    return report


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """{'aligned': bool, 'verdict': one line}: features within `rtol` and 100 % top-1 agreement everywhere."""
    rtol = report.get("rtol", FEATURE_RTOL)
    feats = [s for s in report["stages"] if s["stage"].endswith("features")]
    ranked = [s for s in report["stages"] if "top1_agree" in s]
    worst_rel = max((s["max_rel"] for s in feats), default=0.0)
    worst_top1 = min((s["top1_agree"] for s in ranked), default=1.0)
    ok = worst_rel <= rtol and worst_top1 == 1.0
    n = report["sizes"]["images"]
    if ok:
        line = (f"aligned: features agree to {worst_rel:.1e} (relative, limit {rtol:.0e}) and every prediction's "
                f"top-1 matches on {n} images")
    else:
        bad = [s["stage"] for s in feats if s["max_rel"] > rtol] + [s["stage"] for s in ranked
                                                                    if s["top1_agree"] < 1.0]
        line = (f"NOT aligned: {', '.join(bad)} (worst feature difference {worst_rel:.1e} relative, limit "
                f"{rtol:.0e}; worst top-1 agreement {100 * worst_top1:.1f} % on {n} images)")
    return {"aligned": ok, "verdict": line}


def _num(v: Any) -> str:
    return "" if v is None else f"{v:.2e}" if isinstance(v, float) else str(v)


def _pct(v: Any) -> str:
    return "" if v is None else f"{100 * v:.1f} %"


def _secs(v: Any) -> str:
    return "" if v is None else f"{v:.3f}"


def format_align_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: a per-stage table, an accuracy table (when labels were given), setup and verdict."""
    lines = [f"## PyTorch ↔ Jittor alignment: `{report['backbone']}`", "",
             "| stage | shape | max abs diff | mean abs diff | max rel diff | top-1 agree | top-5 agree | PyTorch s "
             "| Jittor s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in report["stages"]:
        shape = "×".join(str(n) for n in s["shape"])
        lines.append(f"| {s['stage']} | {shape} | {_num(s['max_abs'])} | {_num(s['mean_abs'])} | "
                     f"{_num(s['max_rel'])} | {_pct(s.get('top1_agree'))} | {_pct(s.get('top5_agree'))} | "
                     f"{_secs(s.get('torch_s'))} | {_secs(s.get('jittor_s'))} |")
    if report.get("accuracy"):
        lines += ["", "| top-1 accuracy | PyTorch | Jittor |", "|---|---:|---:|"]
        lines += [f"| {a['what']} | {_pct(a['torch'])} | {_pct(a['jittor'])} |" for a in report["accuracy"]]
    z, v, d = report["sizes"], report["versions"], report["devices"]
    lines += [
        "",
        f"Inputs: {z['images']} images of {z['image_size']}×{z['image_size']} px, {z['classes']} classes, "
        f"{z['prompts']} prompts; embedding width {z['embed_dim']}, {z['parameters']:,} parameters.",
        f"PyTorch {v['torch']} on {d['torch']}" + (f", open_clip {v['open_clip']}" if v.get("open_clip") else "")
        + f"; Jittor {v['jittor']} on {d['jittor']} ({v['jittor_python']}); numpy {v['numpy']} (parent), "
        f"Python {v['python']}.",
        f"Jittor worker start: {report['jittor_startup_s']:.1f} s. Jittor times include each op's one-off JIT "
        "compilation on first use (cached in JITTOR_HOME) and the .npy exchange with the worker.",
        "",
        f"**Verdict: {report['verdict']}**",
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: str | Path, json_out: str | Path | None = None) -> Path:
    """Write the Markdown report (and optionally the JSON) and return the Markdown path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(format_align_markdown(report))
    if json_out is not None:
        Path(json_out).write_text(json.dumps(report, indent=1))
    return out
