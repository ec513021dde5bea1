"""Where Jittor runs: interpreter discovery, Jittor's environment flags, the worker process and the GPU check.

kshot never imports Jittor in its own process (Jittor 1.3 needs numpy<2 and compiles itself on first import). A
worker subprocess, `<python> -m kshot.jittor_backend.worker JOB_DIR`, does the Jittor work; `<python>` is
`$KSHOT_JITTOR_PYTHON` when set, else this interpreter when it has `jittor` (`pip install "kshot[jittor]"`). The
worker gets `PYTHONPATH` pointing at a folder holding only the `kshot` package (a link in JOB_DIR) and imports only
modules that need the stdlib, numpy and Jittor.

Protocol: the parent writes `JOB_DIR/job.json`; the worker answers one JSON line on stdout when ready (or when Jittor
fails to import or compile), then one JSON line per request line read from stdin; arrays travel as `.npy` files in
JOB_DIR. The worker's stderr (Jittor's compiler log) goes to `JOB_DIR/worker.log`, whose tail every error quotes.

Downloads are disabled with Jittor's documented flags (reference: challenge-and-seeds.md §C): `nvcc_path=""` (no
CUDA auto-install; CPU only), `use_mkl=0` (no oneDNN), `use_cutt=0`, `use_cutlass=0`, `use_nccl=0`, `use_mpi=0`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import kshot
from kshot.errors import KshotError

log = logging.getLogger(__name__)

PYTHON_ENV = "KSHOT_JITTOR_PYTHON"
"""Environment variable naming a Python interpreter that has `jittor` installed."""
ENV_FLAGS: dict[str, str] = {"nvcc_path": "", "use_mkl": "0", "use_cutt": "0", "use_cutlass": "0", "use_nccl": "0",
                             "use_mpi": "0"}
"""Jittor's flags that stop every runtime download (CUDA, oneDNN, cutt, cutlass, NCCL, MPI)."""
INSTALL_HINT = ('install it with `pip install "kshot[jittor]"` (Jittor 1.3 needs numpy<2, g++ and the Python '
                'headers), or make a separate venv with `pip install jittor` and set KSHOT_JITTOR_PYTHON to its python')
SM90_MIN_VERSION = (1, 3, 10)
"""First Jittor release whose arch clamp allows sm_90 (Hopper: H100/H200); earlier ones stop at sm_89."""
MAX_CUDA_MAJOR = 12
"""Newest CUDA toolkit major Jittor 1.3.x compiles with (CUDA 13 removed `cudaDeviceProp.computeMode`)."""
STARTUP_TIMEOUT_S = 1800.0
"""Wait for the worker's first answer: a cold first import compiles Jittor for minutes (about 4 on 2 cores)."""
REQUEST_TIMEOUT_S = 900.0
"""Wait for one request: each new op JIT-compiles on first use (seconds each)."""


class JittorError(KshotError):
    """Jittor is missing, cannot import or compile, cannot use the requested device, or a worker request failed."""


def src_root() -> Path:
    """The folder holding the `kshot` package (put on the worker's PYTHONPATH)."""
    return Path(kshot.__file__).resolve().parent.parent


def jittor_env(device: str = "cpu") -> dict[str, str]:
    """Environment flags for a Jittor worker on `device` ('cpu' or 'cuda').

    CPU forces `nvcc_path=""` so no CUDA toolkit is ever downloaded; CUDA keeps the caller's `nvcc_path` (a local
    toolkit, checked by `gpu_problem` first).
    """
    if device not in ("cpu", "cuda"):
        raise JittorError(f"Jittor device must be 'cpu' or 'cuda', got {device!r}")
    env = dict(ENV_FLAGS)
    if device == "cuda":
        del env["nvcc_path"]
    return env


def find_python(python: str | os.PathLike[str] | None = None) -> str:
    """The interpreter to run Jittor with: `python`, else $KSHOT_JITTOR_PYTHON, else this one if it has jittor.

    Raises:
        JittorError: the named interpreter is not an executable file, or none is available (with install hints).
    """
    named, source = (python, "python=") if python else (os.environ.get(PYTHON_ENV), f"${PYTHON_ENV}")
    if named:
        path = shutil.which(str(named)) or str(named)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise JittorError(f"{source} {str(named)!r} is not an executable Python interpreter; {INSTALL_HINT}")
        return path
    if importlib.util.find_spec("jittor") is not None:
        return sys.executable
    raise JittorError(f"Jittor is not installed for {sys.executable} and ${PYTHON_ENV} is not set: {INSTALL_HINT}")


_PROBE = ("import importlib.util as u, importlib.metadata as m, sys\n"
          "if u.find_spec('jittor') is None: sys.exit(3)\n"
          "print(m.version('jittor'))")


def _tail(text: str, chars: int = 2000) -> str:
    text = text.strip()
    return text if len(text) <= chars else "..." + text[-chars:]


def jittor_version(python: str, timeout: float = 120.0) -> str:
    """Installed Jittor version of `python`, read from package metadata (does not import or compile Jittor).

    Raises:
        JittorError: the interpreter fails to run, or has no `jittor` package.
    """
    try:
        res = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        raise JittorError(f"cannot run the Jittor interpreter {python}: {e}") from None
    if res.returncode == 3:
        raise JittorError(f"{python} has no `jittor` package: {INSTALL_HINT}")
    if res.returncode != 0 or not res.stdout.strip():
        raise JittorError(f"the Jittor interpreter {python} failed (exit {res.returncode}): "
                          f"{_tail(res.stderr) or 'no output'}")
    return res.stdout.strip().splitlines()[-1]


def jittor_available(python: str | os.PathLike[str] | None = None) -> str | None:
    """None when a Jittor interpreter is found and has `jittor` installed, else the reason (with install hints).

    Cheap (reads package metadata); whether Jittor compiles is only known when a worker starts.
    """
    try:
        jittor_version(find_python(python))
    except JittorError as e:
        return str(e)
    return None


# ------------------------------------------------------------------------------------------------------ GPU check
def parse_version(text: str) -> tuple[int, ...]:
    """'1.3.9.10' -> (1, 3, 9, 10); '12.4' -> (12, 4); non-numeric parts end the tuple."""
    out = []
    for part in text.strip().split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group()))
    return tuple(out)


def gpu_problem(jittor_version: str, capability: tuple[int, int] | None, cuda_toolkit: str | None) -> str | None:
    """Why Jittor cannot use this GPU, or None when nothing known stops it.

    Args:
        jittor_version: installed Jittor version, e.g. '1.3.11.0'.
        capability: the GPU's compute capability, e.g. (9, 0) for H100/H200; None when no GPU is visible.
        cuda_toolkit: version of the local CUDA toolkit (nvcc) Jittor would compile with, e.g. '12.2'; None when no
            nvcc is found (Jittor would then download a toolkit, which kshot does not allow).
    """
    if capability is None:
        return "no CUDA GPU is visible to this process"
    if cuda_toolkit is None:
        return ("no local CUDA toolkit (nvcc) was found, and kshot does not let Jittor download one: install a CUDA "
                "11.x/12.x toolkit and set nvcc_path to its nvcc")
    major = (parse_version(cuda_toolkit) or (0,))[0]
    if major > MAX_CUDA_MAJOR:
        return (f"the local CUDA toolkit is {cuda_toolkit}, and Jittor {jittor_version} does not support CUDA "
                f"{major}+ (its CUDA helpers read cudaDeviceProp.computeMode, which CUDA 13 removed): install a "
                "CUDA 12.x toolkit and set nvcc_path to its nvcc")
    if tuple(capability) >= (9, 0) and parse_version(jittor_version) < SM90_MIN_VERSION:
        sm = f"sm_{capability[0]}{capability[1]}"
        return (f"Jittor {jittor_version} cannot compile for this GPU ({sm}, e.g. H100/H200): releases before "
                f"{'.'.join(map(str, SM90_MIN_VERSION))} clamp the CUDA arch to sm_89; upgrade jittor")
    return None


def find_nvcc() -> str | None:
    """The nvcc Jittor would use: $nvcc_path, else `nvcc` on PATH, else /usr/local/cuda/bin/nvcc."""
    named = os.environ.get("nvcc_path")
    if named:
        return named if os.path.isfile(named) else None
    found = shutil.which("nvcc")
    if found:
        return found
    default = "/usr/local/cuda/bin/nvcc"
    return default if os.path.isfile(default) else None


def cuda_toolkit_version(nvcc: str | None) -> str | None:
    """'12.2' from `nvcc --version` ('... release 12.2, V12.2.140'), or None."""
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+(?:\.\d+)*)", out)
    return m.group(1) if m else None


def gpu_capability() -> tuple[int, int] | None:
    """Compute capability of CUDA device 0 as torch sees it, or None."""
    try:
        import torch

        if torch.cuda.is_available():
            return tuple(torch.cuda.get_device_capability(0))  # type: ignore[return-value]
    except Exception as e:  # noqa: BLE001 - a broken CUDA install reads as "no GPU"
        log.debug("no CUDA capability: %s", e)
    return None


def check_gpu(python: str) -> None:
    """Raise a JittorError saying why Jittor cannot use the GPU at hand (see `gpu_problem`)."""
    version = jittor_version(python)
    problem = gpu_problem(version, gpu_capability(), cuda_toolkit_version(find_nvcc()))
    if problem:
        raise JittorError(f"Jittor cannot use the GPU here: {problem}. Run the Jittor backend on device='cpu' "
                          "(the default); the PyTorch path is unaffected")


# ------------------------------------------------------------------------------------------------------ worker
class Worker:
    """One Jittor worker subprocess answering JSON requests (see the module docstring).

    Args:
        python: interpreter with jittor (`find_python`).
        job_dir: folder for job.json, the exchanged .npy files and worker.log.
        startup_timeout: seconds to wait for the ready line (first import compiles).
        request_timeout: seconds to wait for each answer (first use of an op compiles).
    """

    def __init__(self, python: str, job_dir: Path, startup_timeout: float = STARTUP_TIMEOUT_S,
                 request_timeout: float = REQUEST_TIMEOUT_S):
        self.python, self.job_dir = python, Path(job_dir)
        self.startup_timeout, self.request_timeout = startup_timeout, request_timeout
        self.proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.job_dir / "worker.log"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return _tail(self.log_path.read_text(errors="replace"), chars)
        except OSError:
            return ""

    def _package_root(self) -> str:
        """A folder holding only `kshot` (a link in JOB_DIR), so that the worker does not also see the packages
        installed next to kshot (numpy 2 in a site-packages would break Jittor); falls back to `src_root()`."""
        shim = self.job_dir / "pythonpath"
        link = shim / "kshot"
        if not link.exists():
            try:
                shim.mkdir(exist_ok=True)
                link.symlink_to(Path(kshot.__file__).resolve().parent, target_is_directory=True)
            except OSError as e:
                log.debug("no kshot link in %s (%s); using %s", shim, e, src_root())
                return str(src_root())
        return str(shim)

    def _env(self, flags: Mapping[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(flags)
        root = self._package_root()
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def start(self, job: Mapping[str, Any]) -> dict[str, Any]:
        """Write job.json, launch the worker and wait for its ready line; returns it.

        When Jittor rebuilds its own helpers during the first import it exits asking to "rerun your command"
        (`jittor/compiler.py: check_cache_compile`); the worker then reports `retry` and is started once more.

        Raises:
            JittorError: the interpreter cannot start, Jittor fails to import/compile, the weights do not load, or
                the worker stays silent past `startup_timeout` (each with the tail of worker.log).
        """
        self.job_dir.mkdir(parents=True, exist_ok=True)
        (self.job_dir / "job.json").write_text(json.dumps(job, indent=1))
        t0 = time.perf_counter()
        for attempt in (1, 2):
            self._launch(job, append=attempt > 1)
            reply = self._answer(self.startup_timeout, "starting (importing and compiling Jittor, loading weights)")
            if reply.get("ok"):
                break
            self.close()
            if attempt == 1 and reply.get("retry"):
                log.info("Jittor rebuilt its compiled helpers and asks for a rerun; restarting the worker once")
                continue
            stage = reply.get("stage", "start")
            what = {"import": "Jittor failed to import or compile", "load": "the Jittor model failed to load",
                    "device": "Jittor cannot use the requested device"}.get(stage, "the Jittor worker failed")
            raise JittorError(self._failure(f"{what} in {self.python}: {reply.get('error', '?')}", stage == "import"))
        log.info("Jittor worker ready in %.1f s (jittor %s, %s)", time.perf_counter() - t0, reply.get("jittor"),
                 reply.get("device"))
        return reply

    def _launch(self, job: Mapping[str, Any], append: bool) -> None:
        self._log = open(self.log_path, "ab" if append else "wb")  # noqa: SIM115 - closed in close()
        cmd = [self.python, "-m", "kshot.jittor_backend.worker", str(self.job_dir)]
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                         text=True, bufsize=1, env=self._env(job.get("env", {})), cwd=self.job_dir)
        except OSError as e:
            self.close()
            raise JittorError(f"cannot start the Jittor worker with {self.python}: {e}") from None
        self._lines = queue.Queue()  # a fresh queue: a previous reader's end-of-stream mark must not leak in
        threading.Thread(target=self._read, args=(self.proc.stdout, self._lines), daemon=True).start()

    @staticmethod
    def _read(stream: IO[str], lines: queue.Queue[str | None]) -> None:
        try:
            for line in stream:
                lines.put(line)
        except (OSError, ValueError):  # stream closed by close()
            pass
        finally:
            lines.put(None)

    def _failure(self, message: str, hint: bool = False) -> str:
        tail = self.log_tail()
        extra = (" Check that g++ and the Python headers are installed and that JITTOR_HOME (default ~/.cache/jittor)"
                 " is writable; a stale cache can be removed to force a rebuild.") if hint else ""
        out = f"{message}.{extra} The PyTorch path is unaffected."
        return out + (f"\n--- tail of {self.log_path} ---\n{tail}" if tail else "")

    def _answer(self, timeout: float, doing: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.close(timeout=0.0)  # a hung worker gets no grace period
                raise JittorError(self._failure(f"the Jittor worker gave no answer within {timeout:.0f} s while "
                                                f"{doing}")) from None
            if line is None:
                rc = self.proc.wait() if self.proc is not None else None
                self.close()
                raise JittorError(self._failure(f"the Jittor worker ({self.python}) exited with code {rc} while "
                                                f"{doing}", hint=True))
            try:
                reply = json.loads(line)
            except json.JSONDecodeError:
                log.debug("jittor worker: %s", line.rstrip())
                continue
            if isinstance(reply, dict):
                return reply

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request; return the worker's answer (a dict with 'ok').

        Raises:
            JittorError: the worker is not running, died, timed out, or answered with an error.
        """
        if self.proc is None or self.proc.poll() is not None or self.proc.stdin is None:
            raise JittorError("the Jittor worker is not running (session closed or crashed)")
        try:
            self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # the worker died; _answer reports it with the log tail
        reply = self._answer(self.request_timeout, f"running {op!r}")
        if not reply.get("ok"):
            raise JittorError(f"Jittor {op} failed: {reply.get('error', '?')}")
        return reply

    def close(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit (waiting up to `timeout` s), then terminate it, then kill it."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                if proc.stdin is not None:
                    proc.stdin.write(json.dumps({"op": "shutdown"}) + "\n")
                    proc.stdin.close()
                proc.wait(timeout=timeout)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                proc.terminate()
                try:
                    proc.wait(timeout=5.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
        if self._log is not None:
            self._log.close()
            self._log = None
