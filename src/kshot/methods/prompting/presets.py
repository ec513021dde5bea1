"""Named training schedules for the prompt learners, per benchmark dataset.

- `official`: ATPrompt's `docs/ATPrompt.md` / `scripts/coop/atprompt_base2new_train.sh` for CoOp+ATP base-to-new:
  NCTX=2 and 100 epochs, DTD NCTX=4, ImageNet 10 epochs (our `atprompt` defaults where no dataset is named).
- `seed000`: the shorter schedule of the ATPrompt Jittor reproduction (seed 000, `StarryAnastasius/Jittor_ATPrompt`,
  reference/challenge-and-seeds.md §D): Caltech101 25 epochs / 4 context tokens, DTD 10 / 2; OxfordPets (no
  result reported there) keeps the official 100 / 2.

A preset gives the same `epochs`/`n_ctx` to `coop` and `atprompt` (so the two are compared on one schedule) and the
dataset's published attributes to `atprompt`; other methods get no overrides (methods opt in with the class
attribute `follows_prompt_presets`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kshot.errors import ConfigError
from kshot.methods.base import METHODS
from kshot.data.benchmarks import get_benchmark

_OFFICIAL = {"DescribableTextures": {"n_ctx": 4, "epochs": 100}, "ImageNet": {"n_ctx": 2, "epochs": 10}}
_SEED000 = {"Caltech101": {"n_ctx": 4, "epochs": 25}, "DescribableTextures": {"n_ctx": 2, "epochs": 10}}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {"official": _OFFICIAL, "seed000": _SEED000}
_DEFAULT = {"n_ctx": 2, "epochs": 100}


def preset_overrides(preset: str, dataset: str, method: str) -> dict[str, Any]:
    """Config overrides of `preset` for `method` on benchmark `dataset` (any name `find_benchmark` knows).

    Raises:
        ConfigError: unknown preset.
        DataError: unknown dataset.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown prompt preset {preset!r}; known: {', '.join(PRESETS)}")
    b = get_benchmark(dataset)
    cls = METHODS.get(method)
    if not getattr(cls, "follows_prompt_presets", False):
        return {}
    out = dict(PRESETS[preset].get(b.name, _DEFAULT))
    if "dataset" in {f.name for f in dataclasses.fields(cls.config_cls)}:  # reads the published attributes
        out["dataset"] = b.name
    return out
