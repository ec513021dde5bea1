"""Interpreter discovery, Jittor's flags, the GPU-support decision and worker failures (no Jittor needed)."""

from __future__ import annotations

import sys
import time

import pytest

from kshot.errors import KshotError
from kshot.jittor_backend.client import JittorSession
from kshot.jittor_backend.runtime import (
    ENV_FLAGS,
    JittorError,
    Worker,
    find_python,
    gpu_problem,
    jittor_available,
    jittor_env,
    jittor_version,
    parse_version,
)
from tests.jittor_backend.helpers import fake_python


def test_cpu_env_disables_every_download_and_cuda_keeps_nvcc():
    cpu = jittor_env("cpu")
    assert cpu["nvcc_path"] == "" and all(cpu[k] == "0" for k in ("use_mkl", "use_cutt", "use_cutlass", "use_nccl",
                                                                     "use_mpi"))
    assert "nvcc_path" not in jittor_env("cuda") and jittor_env("cuda")["use_cutlass"] == "0"
    assert set(cpu) == set(ENV_FLAGS)
    with pytest.raises(JittorError, match="'cpu' or 'cuda'"):
        jittor_env("tpu")


def test_no_interpreter_gives_install_hints(no_jittor_env):
    with pytest.raises(JittorError, match=r'pip install "kshot\[jittor\]".*KSHOT_JITTOR_PYTHON') as e:
        find_python()
    assert isinstance(e.value, KshotError)
    assert "Jittor is not installed" in jittor_available()


def test_env_variable_and_argument_name_the_interpreter(monkeypatch, tmp_path):
    monkeypatch.setenv("KSHOT_JITTOR_PYTHON", str(tmp_path / "missing" / "python"))
    with pytest.raises(JittorError, match=r"\$KSHOT_JITTOR_PYTHON .*missing/python' is not an executable"):
        find_python()
    fake = fake_python(tmp_path / "fake", "exit 0")
    assert find_python(fake) == fake  # the argument wins over the environment
    monkeypatch.setenv("KSHOT_JITTOR_PYTHON", fake)
    assert find_python() == fake


def test_interpreter_without_jittor_package(tmp_path):
    fake = fake_python(tmp_path, "exit 3")
    assert "has no `jittor` package" in jittor_available(fake)


def test_broken_interpreter_reason_quotes_its_stderr(tmp_path):
    fake = fake_python(tmp_path, 'echo "ImportError: libstdc++.so.6: version GLIBCXX_3.4.32 not found" >&2; exit 1')
    reason = jittor_available(fake)
    assert "failed (exit 1)" in reason and "GLIBCXX_3.4.32" in reason


def test_version_is_read_from_metadata(tmp_path):
    fake = fake_python(tmp_path, 'echo "1.3.9.10"')
    assert jittor_version(fake) == "1.3.9.10" and jittor_available(fake) is None


def test_worker_that_cannot_compile_raises_with_its_log(tmp_path):
    fake = fake_python(tmp_path / "bin", 'echo "jittor_utils: g++ failed: fatal error: Python.h: No such file" >&2; '
                                         "exit 1")
    with pytest.raises(JittorError) as e:
        JittorSession(None, python=fake).start()
    msg = str(e.value)
    assert "exited with code 1" in msg and "Python.h: No such file" in msg
    assert "PyTorch path is unaffected" in msg and "g++" in msg


def test_worker_reports_a_failed_jittor_import(tmp_path):
    """The real worker module in an interpreter without jittor: the import failure comes back as a message."""
    session = JittorSession(None, python=sys.executable, workdir=tmp_path)
    with pytest.raises(JittorError, match=r"Jittor failed to import or compile in .*ModuleNotFoundError.*jittor"):
        session.start()
    assert "Traceback" in (tmp_path / "worker.log").read_text()


def test_silent_worker_times_out(tmp_path):
    fake = fake_python(tmp_path / "bin", "exec sleep 60")
    worker = Worker(fake, tmp_path / "job", startup_timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(JittorError, match="no answer within 1 s"):
        worker.start({"env": {}})
    assert time.monotonic() - t0 < 30 and worker.proc is None


def test_requests_need_a_running_worker(tmp_path):
    with pytest.raises(JittorError, match="not running"):
        Worker(sys.executable, tmp_path).request("encode_image")


@pytest.mark.parametrize("version, cap, cuda, expect", [
    ("1.3.11.0", None, "12.2", "no CUDA GPU"),
    ("1.3.11.0", (9, 0), None, "no local CUDA toolkit"),
    ("1.3.11.0", (9, 0), "13.0", "does not support CUDA 13+"),
    ("1.3.9.10", (9, 0), "12.2", "sm_90"),
    ("1.3.8.5", (8, 6), "11.8", None),
    ("1.3.9.10", (8, 9), "12.2", None),
    ("1.3.10.0", (9, 0), "12.4", None),
    ("1.3.11.0", (9, 0), "12.2", None),
])
def test_gpu_problem(version, cap, cuda, expect):
    got = gpu_problem(version, cap, cuda)
    assert (got is None) if expect is None else (expect in got)


def test_parse_version():
    assert parse_version("1.3.9.10") == (1, 3, 9, 10) and parse_version("12.4") == (12, 4)
    assert parse_version("1.3.10rc1") == (1, 3, 10) and parse_version("1.3.9.10") < (1, 3, 10)


def test_worker_is_restarted_once_when_jittor_asks_for_a_rerun(tmp_path):
    """Jittor exits with 'jit_utils updated, please rerun your command.' after rebuilding its helpers."""
    mark = tmp_path / "ran-once"
    fake = fake_python(tmp_path / "bin", f"""if [ -f "{mark}" ]; then
  echo '{{"ok": true, "ready": true, "jittor": "0.0-fake", "device": "cpu"}}'; cat > /dev/null
else
  touch "{mark}"; echo "jit_utils updated, please rerun your command." >&2
  echo '{{"ok": false, "stage": "import", "error": "SystemExit: 0", "retry": true}}'; exit 3
fi""")
    worker = Worker(fake, tmp_path / "job", startup_timeout=30.0)
    try:
        assert worker.start({"env": {}})["jittor"] == "0.0-fake"
        assert "please rerun" in worker.log_tail()  # the first attempt's log is kept
    finally:
        worker.close()
    assert worker.proc is None


def test_cuda_session_is_refused_with_the_reason(tmp_path, monkeypatch):
    from kshot.jittor_backend import runtime

    nvcc = fake_python(tmp_path / "cuda", 'echo "Cuda compilation tools, release 13.0, V13.0.88"')
    monkeypatch.setenv("nvcc_path", nvcc)
    assert runtime.cuda_toolkit_version(runtime.find_nvcc()) == "13.0"
    monkeypatch.setattr(runtime, "gpu_capability", lambda: (9, 0))
    python = fake_python(tmp_path / "py", 'echo "1.3.11.0"')
    with pytest.raises(JittorError, match=r"cannot use the GPU here: .*toolkit is 13\.0.*device='cpu'"):
        JittorSession(None, python=python, device="cuda").start()
    monkeypatch.setattr(runtime, "gpu_capability", lambda: None)
    with pytest.raises(JittorError, match="no CUDA GPU is visible"):
        runtime.check_gpu(python)


def test_worker_sees_only_the_kshot_package(tmp_path):
    import os

    import kshot

    env = Worker(sys.executable, tmp_path)._env({"use_mkl": "0"})
    first = env["PYTHONPATH"].split(os.pathsep)[0]
    assert os.listdir(first) == ["kshot"] and env["use_mkl"] == "0"
    assert os.path.samefile(os.path.join(first, "kshot"), os.path.dirname(kshot.__file__))
