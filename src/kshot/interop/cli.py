"""`kshot align`: PyTorch vs Jittor on a checkpoint and an image set, written as a Markdown report.

Thin over `kshot.interop.align`. The lead mounts `align` as the `kshot align` command
(`app.command("align")(align)`); `app` runs it standalone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from kshot.errors import ConfigError, DataError

app = typer.Typer(rich_markup_mode=None, add_completion=False, help="PyTorch <-> Jittor alignment report.")


def pick_indices(n: int, limit: int | None) -> np.ndarray:
    """`limit` indices spread evenly over range(n) (all of them without a limit), so every class tends to appear."""
    if limit is None or limit >= n:
        return np.arange(n)
    if limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def load_images(backbone: Any, dataset: Any, indices: np.ndarray) -> Any:
    """Preprocessed images [len(indices), 3, S, S] of dataset items (the backbone's own preprocessing)."""
    import torch

    from kshot.data.images import load_image

    return torch.stack([backbone.preprocess(load_image(dataset.abspath(int(i)))) for i in indices])


def align(
    data: Path = typer.Argument(..., help="Images to compare on (dataset path; a flat folder is fine)."),
    backbone: str = typer.Option("toy:clip", "--backbone", "-b", help="CLIP backbone spec or checkpoint path "
                                 "(open_clip:ARCH@TAG, a JCLIP .pkl, toy:clip, ...)."),
    classes: Optional[Path] = typer.Option(None, help="Dataset giving the class list (default: DATA's classes)."),
    artifact: Optional[list[Path]] = typer.Option(None, "--artifact", "-a", help="A `kshot fit` folder or an "
                                                  "exported method .pkl; its head is compared too. Repeatable."),
    out: Path = typer.Option(Path("align_report.md"), "--out", "-o", help="Markdown report to write."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the numbers as JSON."),
    limit: Optional[int] = typer.Option(64, "--limit", "-n", help="Compare on at most N images (spread over DATA)."),
    layout: str = typer.Option("auto", "--layout", help="Data layout: auto|imagefolder|coop|challenge|list|folder."),
    split: str = typer.Option("test", help="Split of DATA to use."),
    templates: Optional[list[str]] = typer.Option(None, "--template", help="Prompt template(s) with {}; repeat."),
    python: Optional[str] = typer.Option(None, "--python", help="Python with jittor (default $KSHOT_JITTOR_PYTHON)."),
    device: str = typer.Option("cpu", "--jittor-device", help="Jittor device: cpu (default) or cuda."),
) -> None:
    """Run a CLIP checkpoint (and fitted heads) in PyTorch and in Jittor; report per-stage differences.

    Example: kshot align data/toy -b toy:clip -n 16 -o align_report.md
    """
    import torch

    from kshot import experiment as wf
    from kshot.backbones import load_backbone
    from kshot.data.sources import load_dataset
    from kshot.interop.align import align_report, write_report

    ds = load_dataset(data, layout=layout, split=split)
    class_ds = load_dataset(classes, layout="auto", split="train") if classes else ds
    if not class_ds.classnames:
        raise DataError(f"{data}: no class list; pass --classes with a labelled dataset or a challenge root")
    if len(ds) == 0:
        raise DataError(f"{data}: no images in split {split!r}")
    idx = pick_indices(len(ds), limit)
    bb = load_backbone(backbone, device="cpu")
    images = load_images(bb, ds, idx)
    labels = None
    if classes is None and ds.has_labels:
        labels = torch.from_numpy(ds.labels[idx])
    spec = wf.prompt_spec_for(class_ds, templates, None)
    report = align_report(bb, images, class_ds.classnames, spec, artifact or None, labels=labels, python=python,
                          device=device)
    path = write_report(report, out, json_out)
    typer.echo(f"{report['verdict']}\nwrote {path}" + (f" and {json_out}" if json_out else ""), err=True)


app.command("align")(align)
