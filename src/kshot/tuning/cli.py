"""`kshot lora merge RUN -o merged.safetensors`: fold a fitted CLIP-LoRA run's adapters into a plain checkpoint.

The output is the base backbone's state dict (its own parameter names) with s · B A added to every adapted
`in_proj_weight`, so every command loads it as a normal backbone: `-b open_clip:ARCH@merged.safetensors` for an
open_clip base, `-b toy:clip@merged.safetensors` for the toy CLIP.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from kshot.devices import device_option
from kshot.errors import CheckpointError, ConfigError

app = typer.Typer(rich_markup_mode=None, add_completion=False, no_args_is_help=True,
                  help="LoRA adapters of fitted runs.")
console = Console(stderr=True)


def merge_run(run: Path, out: Path, device: str = "cpu") -> Path:
    """Write the merged checkpoint of the `kshot fit -m clip_lora` folder `run` to `out` (atomically)."""
    from safetensors.torch import save_file

    from kshot.backbones import load_backbone
    from kshot.methods import load

    method = load(run)
    if not hasattr(method, "merged_state"):
        raise ConfigError(f"{run} holds a {method.name} artifact, which has no LoRA adapters to merge")
    info_path = run / "task.json"
    spec = method.fitted_meta().get("backbone", {}).get("spec")
    if spec is None and info_path.is_file():
        spec = json.loads(info_path.read_text())["backbone"]
    if spec is None:
        raise CheckpointError(f"{run}: no backbone spec recorded")
    base = load_backbone(spec, device=device)
    method.attach_backbone(base)
    state = {k: v.detach().cpu().contiguous() for k, v in method.merged_state(base).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(state, str(tmp), metadata={"kshot": "lora-merge", "base": spec})
    os.replace(tmp, out)
    return out


@app.command()
def merge(
    run: Path = typer.Argument(..., help="Folder written by `kshot fit -m clip_lora`."),
    out: Path = typer.Option(..., "--out", "-o", help="Merged checkpoint (.safetensors)."),
    device: Optional[str] = typer.Option("cpu", "--device", callback=device_option, help="Device for loading the base backbone."),
) -> None:
    """Merge a run's LoRA adapters into its base backbone and write a plain checkpoint.

    Example: kshot lora merge runs/lora -o merged.safetensors
    """
    path = merge_run(run, out, device or "cpu")
    console.print(f"merged LoRA adapters of {run} -> {path}")
