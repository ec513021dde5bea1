"""The JSON API against a running server: fit in the worker, list runs, predict, and the safety checks."""

import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image


def _wait(client, job, limit=120):
    deadline = time.time() + limit
    while job["status"] in ("queued", "running"):
        assert time.time() < deadline, job
        time.sleep(0.2)
        job = client.get(f"/jobs/{job['id']}").json()
    return job


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server["url"], timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def fitted(client):
    jobs = [client.post("/fit", json={"dataset": "toy", "method": m, "shots": 2}).json()
            for m in ("lpp", "tip_adapter")]  # submitted together: they share the queue, never a folder
    return [_wait(client, j) for j in jobs]


def _png(path):
    buf = io.BytesIO()
    Image.open(path).save(buf, "PNG")
    return buf.getvalue()


def test_two_fits_finish_in_their_own_run_folders(client, fitted, server):
    assert [j["status"] for j in fitted] == ["done", "done"], fitted
    names = {j["run"] for j in fitted}
    assert len(names) == 2
    listed = {r["name"]: r for r in client.get("/runs").json()}
    assert names <= set(listed)
    for j in fitted:
        assert (server["cfg"].runs_dir / j["run"] / "method.json").is_file()
        assert 0.0 <= j["metrics"]["test_top1"] <= 1.0 and len(j["metrics"]["recall"]) == 16
    assert fitted[0]["metrics"]["test_top1"] > 0.3  # lpp, 2 shots, 16 opaque classes: measured 0.58 (chance 0.06)
    assert not list(server["cfg"].runs_dir.glob(".*partial"))


def test_predict_returns_top5_with_probabilities(client, fitted, server):
    test = sorted((server["base"] / "data" / "toy" / "test").iterdir())[0]
    img = next(test.iterdir())
    r = client.post("/predict", params={"run": fitted[0]["run"]}, files={"file": ("x.png", _png(img))})
    assert r.status_code == 200, r.text
    top = r.json()["top"]
    assert len(top) == 5 and all(a["prob"] >= b["prob"] for a, b in zip(top, top[1:]))
    assert 0 < sum(t["prob"] for t in top) <= 1.0001


def test_page_and_openapi_schema(client):
    assert "kshot" in client.get("/").text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/runs", "/fit", "/datasets"} <= set(paths)


@pytest.mark.parametrize("dataset", ["../outside", "/etc", "toy/../../outside", "nope"])
def test_dataset_outside_the_roots_is_a_400(client, dataset):
    r = client.post("/fit", json={"dataset": dataset, "method": "lpp", "shots": 1})
    assert r.status_code == 400 and r.json()["detail"]


def test_bad_uploads_get_clear_errors(client, fitted):
    run = fitted[0]["run"]
    r = client.post("/predict", params={"run": run}, files={"file": ("a.txt", b"hello, not an image")})
    assert r.status_code == 400 and "not a readable image" in r.json()["detail"]
    big = io.BytesIO()
    Image.fromarray(np.zeros((600, 600, 3), np.uint8)).save(big, "PNG")
    r = client.post("/predict", params={"run": run}, files={"file": ("big.png", big.getvalue())})
    assert r.status_code == 400 and "pixels" in r.json()["detail"]
    r = client.post("/predict", params={"run": run}, files={"file": ("huge.bin", b"\0" * 300_000)})
    assert r.status_code == 400 and "exceeds" in r.json()["detail"]
    assert client.post("/predict", params={"run": "nope"}, files={"file": ("a.png", b"x")}).status_code == 404
    r = client.post("/fit", json={"dataset": "toy", "method": "no_such_method", "shots": 1})
    assert r.status_code == 400
