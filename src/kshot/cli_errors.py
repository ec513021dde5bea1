"""The `kshot` entry point's one error handler: a user mistake is one `error: ...` line and a non-zero exit.

Mapped to one line (exit status in brackets):
- kshot's own errors (`kshot.errors.KshotError` and subclasses) [2];
- command-line parse errors of typer (unknown option, bad integer, missing argument) [2], with the usage hint;
- operating-system errors on the user's files: missing, permission denied, read-only file system, disk full, file
  size limit, a file where a folder is expected [1]. The process ignores `SIGXFSZ`, so a file-size limit
  (`ulimit -f`, `RLIMIT_FSIZE`) surfaces as an `EFBIG` error here instead of killing the process;
- Ctrl-C [130].

Anything else is a bug in kshot and keeps its traceback. `--debug` anywhere on the command line (it is removed before
parsing) or `KSHOT_DEBUG=1` re-raises every error with its traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from kshot.errors import KshotError

DEBUG_FLAG = "--debug"
DEBUG_ENV = "KSHOT_DEBUG"

_OS_HINTS = {
    errno.ENOSPC: "no space left on the device",
    errno.EFBIG: "file too large (disk quota or file-size limit reached)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a file is in the way where a folder is expected",
    errno.EISDIR: "is a folder, expected a file",
    errno.EEXIST: "already exists",
    errno.ENOTEMPTY: "folder is not empty",
}


def describe_os_error(e: OSError) -> str:
    """A one-line description of an OSError naming the file(s), e.g. `permission denied: /out/run/report.json`."""
    what = _OS_HINTS.get(e.errno or -1) or (e.strerror or type(e).__name__).lower()
    names = [str(n) for n in (e.filename, e.filename2) if n is not None]
    return f"{what}: {' -> '.join(names)}" if names else f"{what} ({e})"


def _debug(argv: list[str]) -> tuple[bool, list[str]]:
    on = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if DEBUG_FLAG in argv:
        on = True
        argv = [a for a in argv if a != DEBUG_FLAG]
    return on, argv


def run_cli(app: Any, argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    """Run the typer `app` on `argv` (default: `sys.argv[1:]`) and return the exit status, errors mapped as above.

    Raises:
        Exception: only with `--debug`/`KSHOT_DEBUG=1`, or for an unexpected (internal) error.
    """
    debug, args = _debug(list(sys.argv[1:] if argv is None else argv))
    err = console or Console(stderr=True, highlight=False)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")

    def fail(message: str, status: int, hint: bool = True) -> int:
        err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
        if hint and not debug:
            err.print("(run with --debug or KSHOT_DEBUG=1 for the traceback)", style="dim")
        return status

    try:
        rv = app(args=args, prog_name="kshot", standalone_mode=False)
    except typer.Exit as e:
        return int(e.exit_code or 0)
    except typer.TyperException as e:  # typer's (vendored click) parse errors: UsageError, BadParameter, ...
        if type(e).__name__ == "NoArgsIsHelpError":  # `kshot` / `kshot challenge` alone: the help text
            e.show()  # type: ignore[attr-defined]
            return 0
        if debug:
            raise
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        return fail(e.format_message() + hint, 2, hint=False)
    except (typer.Abort, KeyboardInterrupt):
        if debug:
            raise
        return fail("interrupted", 130, hint=False)
    except KshotError as e:
        if debug:
            raise
        return fail(str(e), 2)
    except OSError as e:
        if debug:
            raise
        return fail(describe_os_error(e), 1)
    return rv if isinstance(rv, int) else 0


def main(app: Any) -> None:
    """`sys.exit(run_cli(app))`: the body of the `kshot` console script."""
    sys.exit(run_cli(app))
