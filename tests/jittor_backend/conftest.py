"""Fixtures of the Jittor-backend tests: small CLIP backbones (see helpers.py) and an environment without Jittor."""

from __future__ import annotations

import pytest

from kshot.backbones.base import Backbone
from tests.jittor_backend.helpers import RN_CFG, VIT_CFG, as_backbone, build_clip


@pytest.fixture(scope="session")
def vit_backbone() -> Backbone:
    return as_backbone(build_clip(VIT_CFG, quick_gelu=True, seed=0), "test:vit")


@pytest.fixture(scope="session")
def rn_backbone() -> Backbone:
    return as_backbone(build_clip(RN_CFG, quick_gelu=False, seed=1), "test:rn")


@pytest.fixture(scope="session")
def toy_backbone() -> Backbone:
    from kshot.backbones import load_backbone

    return load_backbone("toy:clip")


@pytest.fixture
def no_jittor_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No $KSHOT_JITTOR_PYTHON and no jittor in this interpreter."""
    import importlib.util

    monkeypatch.delenv("KSHOT_JITTOR_PYTHON", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jittor" else real(name, *a))

