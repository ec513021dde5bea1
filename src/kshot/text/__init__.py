"""Prompt templates and text classifier weights."""

from kshot.text.classifier import build_text_classifier, encode_texts
from kshot.text.templates import (
    CHALLENGE_DOMAIN_TEMPLATES,
    DATASET_TEMPLATES,
    DEFAULT_TEMPLATE,
    IMAGENET_ENSEMBLE,
    PromptSpec,
    dataset_template,
    load_prompt_file,
)

__all__ = [
    "CHALLENGE_DOMAIN_TEMPLATES",
    "DATASET_TEMPLATES",
    "DEFAULT_TEMPLATE",
    "IMAGENET_ENSEMBLE",
    "PromptSpec",
    "build_text_classifier",
    "dataset_template",
    "encode_texts",
    "load_prompt_file",
]
