"""`kshot.progress.ticker`: elapsed-time progress for steps without a count (the Jittor worker starting)."""

import time


import kshot.jittor_backend.client as client
from kshot import progress


def test_ticker_redraws_while_the_step_runs_and_obeys_quiet(capsys):
    with progress.ticker("starting the thing", interval=0.05):
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert err.count("starting the thing") >= 3  # redrawn while waiting, not only at the start
    progress.set_quiet(True)
    try:
        with progress.ticker("silent", interval=0.05):
            time.sleep(0.15)
    finally:
        progress.set_quiet(False)
    assert "silent" not in capsys.readouterr().err


def test_jittor_session_start_shows_progress(monkeypatch, tmp_path, capsys):
    class SlowWorker:
        def __init__(self, *args):
            pass

        def start(self, job):
            time.sleep(1.3)
            return {"jittor": "fake"}

    monkeypatch.setattr(client, "Worker", SlowWorker)
    monkeypatch.setattr(client, "find_python", lambda python=None: "python")
    session = client.JittorSession(None, workdir=tmp_path)
    session.start()
    assert session.info["jittor"] == "fake"
    err = capsys.readouterr().err
    assert err.count("starting the Jittor worker") >= 2, err
