"""Prompt templates as data: single templates, ensembles, per-dataset defaults and per-domain JSON files.

A "prompt set" for a class is a list of full sentences. It comes from templates containing `{}` (filled with the
class name) or, CuPL-style, from a JSON dict mapping class names to ready-made sentences.

Per-dataset defaults are CoOp's `CUSTOM_TEMPLATES` (reference/methods.md §0); the 7-template ImageNet ensemble is the
one Tip-Adapter, LP++ and InMaP use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from kshot.errors import ConfigError

DEFAULT_TEMPLATE = "a photo of a {}."

#: CoOp's per-dataset templates (KaiyangZhou/CoOp trainers/zsclip.py CUSTOM_TEMPLATES).
DATASET_TEMPLATES: dict[str, str] = {
    "oxfordpets": "a photo of a {}, a type of pet.",
    "oxfordflowers": "a photo of a {}, a type of flower.",
    "fgvcaircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "describabletextures": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanfordcars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
}

#: The 7-template ImageNet ensemble (Tip-Adapter / LP++ / InMaP).
IMAGENET_ENSEMBLE: list[str] = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]

#: Per-domain templates for the Jittor challenge's domains (seed 002 uses "a photo of a {}, a type of animal.").
CHALLENGE_DOMAIN_TEMPLATES: dict[str, list[str]] = {
    "Animal": ["a photo of a {}, a type of animal."],
    "Caltech-101": ["a photo of a {}."],
    "Food-101": ["a photo of {}, a type of food."],
    "Thu-dog": ["a photo of a {}, a type of dog."],
    "Stanford-Cars": ["a photo of a {}, a type of car."],
}


@dataclass
class PromptSpec:
    """How to turn class names into prompts.

    Attributes:
        templates: templates used for every class (with `{}`), at least one.
        per_domain: optional domain -> templates, overriding `templates` for classes of that domain.
        per_class: optional class name -> full sentences (CuPL style), overriding both.
    """

    templates: list[str] = field(default_factory=lambda: [DEFAULT_TEMPLATE])
    per_domain: dict[str, list[str]] = field(default_factory=dict)
    per_class: dict[str, list[str]] = field(default_factory=dict)

    def prompts_for(self, classname: str, domain: str | None = None) -> list[str]:
        """The sentences for one class (non-empty)."""
        if classname in self.per_class:
            return list(self.per_class[classname])
        templates = self.per_domain.get(domain, self.templates) if domain else self.templates
        return [fill(t, classname) for t in templates]


def fill(template: str, classname: str) -> str:
    if "{}" not in template:
        raise ConfigError(f"template {template!r} has no '{{}}' placeholder for the class name")
    return template.replace("{}", classname)


def dataset_template(dataset_name: str) -> str:
    """CoOp's template for a dataset name (case/punctuation-insensitive), else the default."""
    key = "".join(ch for ch in dataset_name.lower() if ch.isalnum())
    return DATASET_TEMPLATES.get(key, DEFAULT_TEMPLATE)


def _as_prompt_list(value: object, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a non-empty list of strings")
    return value


def load_prompt_file(path: str | Path) -> PromptSpec:
    """Read prompts from JSON.

    Accepted shapes:
      * a list of templates: `["a photo of a {}.", ...]`;
      * `{"templates": [...], "domains": {"Animal": [...]}, "classes": {"cat": ["..."]}}`;
      * a dict keyed by domain, values lists of templates with `{}` (`{"Animal": ["a photo of a {}, ..."]}`);
      * a dict keyed by class name, values lists of full sentences without `{}` (CuPL style);
      * a folder of per-domain files `<Domain>_prompt.json` (seed 002's `prompts/Animal_prompt.json`), each file any
        of the shapes above, whose templates apply to that domain.
    """
    path = Path(path)
    if path.is_dir():
        spec = PromptSpec()
        files = sorted(path.glob("*.json"))
        if not files:
            raise ConfigError(f"{path}: no .json prompt files in this folder")
        for f in files:
            domain = f.stem.removesuffix("_prompt").removesuffix("_prompts")
            sub = load_prompt_file(f)
            spec.per_class.update(sub.per_class)
            spec.per_domain.update(sub.per_domain)
            if sub.templates != [DEFAULT_TEMPLATE] or not (sub.per_class or sub.per_domain):
                spec.per_domain[domain] = sub.templates
        return spec
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"prompt file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from None
    if isinstance(doc, list):
        return PromptSpec(templates=[_check_template(t, path) for t in _as_prompt_list(doc, str(path))])
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"{path}: expected a list of templates or a non-empty JSON object")
    if {"templates", "domains", "classes"} & set(doc):
        spec = PromptSpec()
        if "templates" in doc:
            spec.templates = [_check_template(t, path) for t in _as_prompt_list(doc["templates"], f"{path}:templates")]
        for d, v in doc.get("domains", {}).items():
            spec.per_domain[d] = [_check_template(t, path) for t in _as_prompt_list(v, f"{path}:domains.{d}")]
        for c, v in doc.get("classes", {}).items():
            spec.per_class[c] = _as_prompt_list(v, f"{path}:classes.{c}")
        return spec
    values = {k: _as_prompt_list(v, f"{path}:{k}") for k, v in doc.items()}
    if all("{}" in t for v in values.values() for t in v):
        return PromptSpec(per_domain=values)
    return PromptSpec(per_class=values)


def _check_template(t: str, path: Path) -> str:
    if "{}" not in t:
        raise ConfigError(f"{path}: template {t!r} has no '{{}}' placeholder")
    return t
