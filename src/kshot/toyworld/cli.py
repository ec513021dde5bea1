"""`kshot toyworld generate|export|pretrain|evaluate`: thin commands over the toy-world library."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer

app = typer.Typer(rich_markup_mode=None, help="The procedural toy world and its tiny CLIP.", no_args_is_help=True)


def _domains(domains: Optional[str]) -> Optional[list[str]]:
    return [d.strip() for d in domains.split(",") if d.strip()] if domains else None


@app.command()
def generate(
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="write the split as .npz (images uint8 [N,S,S,3], labels, names)"),
    domains: Optional[str] = typer.Option(None, help="comma-separated domains (default: all)"),
    per_class: int = typer.Option(16, help="train-pool images per class"),
    n_test: int = typer.Option(25, help="test images per class"),
    seed: int = typer.Option(0, help="split seed"),
    world_seed: int = typer.Option(0, help="world seed"),
) -> None:
    """Print the world's classes per domain; with --out, render a split to an .npz file.

    Example: kshot toyworld generate --domains Shapes -o toy_split.npz
    """
    from kshot.toyworld.generator import DOMAINS, World, WorldSpec

    world = World(WorldSpec(seed=world_seed))
    for d in DOMAINS:
        ids = world.class_ids(d)
        names = [world.classes[i].name for i in ids]
        typer.echo(f"{d:10s} {len(ids):3d} classes (ids {ids[0]}-{ids[-1]}): {', '.join(names[:6])}, ...")
    if out is None:
        return
    split = world.make_split(_domains(domains), n_train=per_class, n_val=0, n_test=n_test, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, train_images=split.train.images, train_labels=split.train.labels,
                        test_images=split.test.images, test_labels=split.test.labels,
                        classnames=np.array(split.classnames), domains=np.array(split.domains),
                        class_ids=np.array(split.class_ids))
    typer.echo(f"wrote {out}: {len(split.train.labels)} train, {len(split.test.labels)} test images")


@app.command()
def export(
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
    layout: str = typer.Option("challenge", help="imagefolder | coop | challenge"),
    per_class: int = typer.Option(32, help="train-pool images per class"),
    n_val: int = typer.Option(8, help="val images per class"),
    n_test: int = typer.Option(25, help="test images per class"),
    domains: Optional[str] = typer.Option(None, help="comma-separated domains (default: all for challenge, else "
                                                      "those with training images)"),
    seed: int = typer.Option(0, help="split seed"),
    world_seed: int = typer.Option(0, help="world seed"),
) -> None:
    """Render the world and write it as PNG files in a layout kshot reads.

    Example: kshot toyworld export --layout imagefolder --domains Creatures -o data/toy
    """
    from kshot.errors import KshotError
    from kshot.toyworld.export import export_world
    from kshot.toyworld.generator import World, WorldSpec

    try:
        path = export_world(World(WorldSpec(seed=world_seed)), layout, out, domains=_domains(domains),
                            n_train=per_class, n_val=n_val, n_test=n_test, seed=seed)
    except KshotError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"wrote {layout} export to {path}")


@app.command()
def pretrain(
    out: Path = typer.Option(..., "--out", "-o", help="folder for toy_clip.safetensors + toy_clip.json"),
    steps: int = typer.Option(1750, help="optimiser steps"),
    batch_size: int = typer.Option(128, help="images per step"),
    seed: int = typer.Option(0, help="seed of the initialisation and data stream"),
    threads: int = typer.Option(1, help="torch threads"),
    checkpoint_every: int = typer.Option(0, help="resumable checkpoint every N steps (0 = off)"),
    evaluate: bool = typer.Option(True, help="measure accuracies and store them in the JSON"),
) -> None:
    """Pretrain a tiny CLIP from scratch on generated images and captions.

    Example: kshot toyworld pretrain -o my_toy_clip --steps 2000
    """
    from kshot.toyworld.checkpoint import save_toy_clip
    from kshot.toyworld.evaluate import measure
    from kshot.toyworld.model import toy_preprocess_cfg
    from kshot.toyworld.pretrain import PretrainConfig
    from kshot.toyworld.pretrain import pretrain as run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = PretrainConfig(steps=steps, batch_size=batch_size, seed=seed, threads=threads,
                         checkpoint_every=checkpoint_every,
                         checkpoint_dir=str(out / "resume") if checkpoint_every else None)
    res = run(cfg)
    pre = toy_preprocess_cfg(res.config.model.image_size)
    meta = {"world": res.world_spec.to_dict(), "recipe": res.config.to_dict(), "wall_s": round(res.wall_s, 1),
            "command": " ".join(["kshot", *sys.argv[1:]]),
            "final_loss": float(np.mean(res.losses[-50:])), "date": time.strftime("%Y-%m-%d")}
    if evaluate:
        meta["metrics"] = measure(res.model, res.tokenizer, pre)
    path = save_toy_clip(out, res.model, res.tokenizer, res.config.model, pre, meta)
    typer.echo(json.dumps(meta.get("metrics", {}), indent=1))
    typer.echo(f"wrote {path}")


@app.command()
def evaluate(
    path: Optional[Path] = typer.Argument(None, help="checkpoint folder (default: the shipped one)"),
) -> None:
    """Measure zero-shot and linear-probe accuracies of a toy checkpoint on a fresh split.

    Example: kshot toyworld evaluate
    """
    import torch

    from kshot.toyworld.checkpoint import load_toy_model
    from kshot.toyworld.evaluate import measure
    from kshot.toyworld.generator import World, WorldSpec

    torch.set_num_threads(1)
    model, tok, pre, cfg = load_toy_model(path)
    world = World(WorldSpec.from_dict(cfg["world"])) if "world" in cfg else World()
    typer.echo(json.dumps(measure(model, tok, pre, world), indent=1))
