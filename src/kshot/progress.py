"""Progress bars: one switch (`set_quiet`) that every kshot bar obeys, whatever the import order.

tqdm reads ``TQDM_DISABLE`` once, when it is imported, so setting the variable later (as ``kshot -q`` parses its flags
after the packages are loaded) does not reach bars made afterwards; kshot therefore makes its bars through `bar`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_quiet = False
_exported = False  # whether set_quiet (not the user) put TQDM_DISABLE in the environment


def set_quiet(quiet: bool = True) -> None:
    """Disable (or re-enable) every bar made by `bar` from now on; also exported to child processes (workers)."""
    global _quiet, _exported
    _quiet = bool(quiet)
    if quiet and "TQDM_DISABLE" not in os.environ:
        os.environ["TQDM_DISABLE"] = "1"
        _exported = True
    elif not quiet and _exported:
        os.environ.pop("TQDM_DISABLE", None)
        _exported = False


def is_quiet() -> bool:
    """True when bars are off (`set_quiet` or ``TQDM_DISABLE`` set in the environment)."""
    return _quiet or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


def bar(*args: Any, auto: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar (``tqdm.auto`` unless `auto` is False) that is disabled when kshot is quiet."""
    if auto:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    kwargs["disable"] = bool(kwargs.get("disable", False)) or is_quiet()
    return tqdm(*args, **kwargs)


@contextmanager
def ticker(desc: str, interval: float = 1.0) -> Iterator[Any]:
    """A bar showing `desc` and the elapsed time, redrawn every `interval` seconds, for a step with no count of its
    own (a worker process starting); disabled when kshot is quiet."""
    pb = bar(total=None, desc=desc, bar_format="{desc}: {elapsed}", leave=False)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(interval):
            pb.refresh()

    thread = threading.Thread(target=tick, name="kshot-ticker", daemon=True)
    thread.start()
    try:
        yield pb
    finally:
        stop.set()
        thread.join()
        pb.close()
