"""Shared test configuration: opt-in markers and one thread per test process (2-core CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # tiny ops: extra threads only spin-wait (and stall on a shared box)

# The Jittor tests run Jittor in its own interpreter (it needs numpy<2); the README's test command makes one in
# .venv-jittor. Without one they are skipped, with the reason.
_JITTOR_VENV = Path(__file__).resolve().parents[1] / ".venv-jittor" / "bin" / "python"
if "KSHOT_JITTOR_PYTHON" not in os.environ and _JITTOR_VENV.is_file():
    os.environ["KSHOT_JITTOR_PYTHON"] = str(_JITTOR_VENV)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gates = {
        "slow": ("KSHOT_SLOW", "full-size or long test; set KSHOT_SLOW=1 to run"),
        "online": ("KSHOT_ONLINE", "needs network or real weights; set KSHOT_ONLINE=1 to run"),
    }
    for item in items:
        for marker, (env, reason) in gates.items():
            if marker in item.keywords and os.environ.get(env) != "1":
                item.add_marker(pytest.mark.skip(reason=reason))
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))


@pytest.fixture(autouse=True)
def _process_globals_restored():
    """`kshot -q/-v` set the root log level and the progress switch for the process: in-process CLI tests
    (CliRunner) must not leave them to the tests that run after."""
    import logging

    from kshot.progress import set_quiet

    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)
    set_quiet(False)
