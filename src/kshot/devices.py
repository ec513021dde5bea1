"""A user's device name (`--device`, `device:` in a config) checked once: `cpu`, `cuda`, `cuda:1`, `mps`, ...

`check_device` parses the name with torch and refuses an accelerator this machine does not have, so a typo
(`cpux`, `cuda:x`) or a missing GPU is one error line naming the option, not a traceback deep inside a model.
"""

from __future__ import annotations

import torch

from kshot.errors import ConfigError


def check_device(name: str, where: str = "--device") -> torch.device:
    """`name` as a torch.device, checked against the accelerators present.

    Raises:
        ConfigError: naming `where` and the value, for an unparsable name, an unavailable backend or a GPU index
            beyond the devices present.
    """
    try:
        dev = torch.device(str(name).strip())
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"{where} {name!r}: not a device name (use cpu, cuda, cuda:1, mps ...)") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"{where} {name!r}: CUDA is not available on this machine (use cpu)")
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"{where} {name!r}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"{where} {name!r}: MPS is not available on this machine (use cpu)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{where} {name!r}: kshot runs on cpu, cuda or mps, not {dev.type}")
    return dev


def device_option(value: str | None) -> str | None:
    """A typer callback for `--device` options: the value unchanged once `check_device` accepts it (None passes)."""
    if value is not None and value != "auto":
        check_device(value, "--device")
    return value
