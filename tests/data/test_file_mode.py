"""Atomic writes go through mkstemp (0600) but leave ordinary files: the mode respects the umask."""

from __future__ import annotations

import os
import stat

import pytest
import numpy as np

from kshot.backbones.jittor_pkl import save_jittor_pkl
from kshot.data.paths import atomic_write_text


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        save_jittor_pkl({"w": np.zeros(2, np.float32)}, tmp_path / "b.pkl")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.pkl"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
