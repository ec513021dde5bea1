"""The JSON API against a running server: fit in the worker, list runs, predict, and the safety checks."""

import io
import json
import os
import time
import zipfile
from pathlib import Path

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


def _zip_bytes(members, compression=zipfile.ZIP_DEFLATED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def _toy_zip(server, classes=3, top="mine"):
    root = server["base"] / "data" / "toy"
    members = []
    for split in ("train", "test"):
        for c in sorted((root / split).iterdir())[:classes]:
            members += [(f"{top}/{split}/{c.name}/{f.name}", f.read_bytes()) for f in sorted(c.iterdir())]
    return _zip_bytes(members)


def test_uploaded_zip_becomes_a_dataset_with_a_gallery(client, server):
    r = client.post("/upload", files={"file": ("mine.zip", _toy_zip(server))}, data={"name": "uploaded"})
    assert r.status_code == 200, r.text
    assert r.json() == {"dataset": "uploaded", "classes": 3, "train_images": 12}
    assert "uploaded" in client.get("/datasets").json()
    assert (server["cfg"].uploads / "uploaded" / "train").is_dir()  # the zip's top folder was stripped
    items = client.get("/shots", params={"dataset": "uploaded", "shots": 2}).json()["items"]
    assert len(items) == 6 and all(it["path"].startswith("train/") for it in items)
    r = client.post("/upload", files={"file": ("mine.zip", _toy_zip(server))}, data={"name": "uploaded"})
    assert r.status_code == 400 and "already exists" in r.json()["detail"]


@pytest.mark.parametrize("members, words", [
    ([("toy/train/a/0.png", b"x"), ("../../evil.txt", b"evil")], "'..'"),
    ([("toy/train/a/0.png", b"x"), ("/tmp/evil.txt", b"evil")], "absolute"),
    ([("toy/train/a/zeros.bin", b"\0" * 15_000_000)], "zip bomb"),  # 15 MB from ~15 KB
    ([("toy/readme.txt", b"no train split here")], "train split"),
])
def test_unsafe_or_unusable_zips_are_a_400_and_leave_nothing(client, server, members, words):
    before = sorted(p.name for p in server["cfg"].uploads.iterdir())
    r = client.post("/upload", files={"file": ("x.zip", _zip_bytes(members))}, data={"name": "bad"})
    assert r.status_code == 400 and words in r.json()["detail"], r.text
    assert sorted(p.name for p in server["cfg"].uploads.iterdir()) == before
    assert not (server["base"] / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_oversized_and_non_zip_uploads_are_a_400(client):
    r = client.post("/upload", files={"file": ("big.zip", os.urandom(3_100_000))})
    assert r.status_code == 400 and "exceeds" in r.json()["detail"]
    r = client.post("/upload", files={"file": ("big.zip", b"\0" * 5_000_000)})  # over limit + framing: not read
    assert r.status_code == 400 and "request body" in r.json()["detail"]
    r = client.post("/upload", files={"file": ("a.zip", b"plain text")})
    assert r.status_code == 400 and "not a zip" in r.json()["detail"]
    r = client.post("/upload", files={"file": ("a.zip", b"x")}, data={"name": "../up"})
    assert r.status_code == 400 and "dataset name" in r.json()["detail"]


def test_shot_gallery_redraws_with_another_seed_and_serves_thumbnails(client, server):
    one = client.get("/shots", params={"dataset": "toy", "shots": 2, "seed": 1}).json()["items"]
    assert one == client.get("/shots", params={"dataset": "toy", "shots": 2, "seed": 1}).json()["items"]
    two = client.get("/shots", params={"dataset": "toy", "shots": 2, "seed": 2}).json()["items"]
    assert len(one) == len(two) == 32 and one != two
    assert sorted({it["class"] for it in one}) == sorted(p.name for p in (server["base"] / "data/toy/train").iterdir())
    r = client.get("/thumb", params={"dataset": "toy", "path": one[0]["path"], "size": 40})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert max(Image.open(io.BytesIO(r.content)).size) <= 40
    for path in ("../../outside", "/etc/passwd", "train/none.png"):
        assert client.get("/thumb", params={"dataset": "toy", "path": path}).status_code == 400
    assert client.get("/thumb", params={"dataset": "../outside", "path": "x.png"}).status_code == 400


def test_a_dropped_shot_is_left_out_of_the_fit(client, server):
    items = client.get("/shots", params={"dataset": "toy", "shots": 2, "seed": 3}).json()["items"]
    job = client.post("/fit", json={"dataset": "toy", "method": "tip_adapter", "shots": 2, "seed": 3,
                                    "drop": [items[0]["path"]]}).json()
    job = _wait(client, job)
    assert job["status"] == "done", job
    used = (server["cfg"].runs_dir / job["run"] / "shots.txt").read_text()
    assert items[0]["path"].split("/", 1)[1] not in used and items[1]["path"].split("/", 1)[1] in used
    assert len(used.split()) // 2 == 31 and job["metrics"]["dropped"] == [items[0]["path"]]
    r = client.post("/fit", json={"dataset": "toy", "method": "lpp", "shots": 2, "seed": 3, "drop": ["train/x/9.png"]})
    assert r.status_code == 400 and "not one of the drawn shots" in r.json()["detail"]
    same_class = [it["path"] for it in items if it["class"] == items[0]["class"]]
    r = client.post("/fit", json={"dataset": "toy", "method": "lpp", "shots": 2, "seed": 3, "drop": same_class})
    assert r.status_code == 400 and "without any" in r.json()["detail"]


def test_report_has_recall_confusion_picture_and_mistakes_with_top5(client, fitted):
    run = fitted[0]["run"]
    rep = client.get(f"/runs/{run}").json()
    m = rep["metrics"]
    assert len(m["recall"]) == 16 and set(m["recall"]) == set(rep["classnames"])
    n_test = 48
    assert m["n_mistakes"] == round((1 - m["test_top1"]) * n_test) == len(m["mistakes"])
    recall_mean = sum(m["recall"].values()) / 16  # 3 test images per class: mean recall equals top-1 here
    assert abs(recall_mean - m["test_top1"]) < 1e-9
    for x in m["mistakes"]:
        assert len(x["top"]) == 5 and x["top"][0]["class"] != x["true"]
        assert x["path"].startswith("test/") and x["path"].split("/")[1] == x["true"]
        assert client.get("/thumb", params={"dataset": m["dataset"], "path": x["path"]}).status_code == 200
    r = client.get(f"/runs/{run}/confusion.png")
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size[0] > 200
    assert client.get("/runs/nope/confusion.png").status_code == 404


def test_two_fits_ran_at_once_each_in_its_own_folder(fitted, server):
    a, b = fitted
    assert max(a["started"], b["started"]) < min(a["ended"], b["ended"]), (a, b)  # the two fits overlapped
    for j, method in zip(fitted, ("lpp", "tip_adapter")):
        assert json.loads((server["cfg"].runs_dir / j["run"] / "task.json").read_text())["method"] == method
        assert json.loads((server["cfg"].runs_dir / j["run"] / "method.json").read_text())["method"] == method


def test_page_stays_responsive_during_a_fit(client):
    job = client.post("/fit", json={"dataset": "toy", "method": "tip_adapter_f", "shots": 1}).json()
    answered = []
    while job["status"] in ("queued", "running"):
        for path in ("/", "/runs", "/datasets", f"/jobs/{job['id']}"):
            t0 = time.perf_counter()
            r = client.get(path)
            answered.append((job["status"], time.perf_counter() - t0))
            assert r.status_code == 200
        job = client.get(f"/jobs/{job['id']}").json()
        time.sleep(0.05)
    assert job["status"] == "done", job
    during = [dt for status, dt in answered if status == "running"]
    print(f"fit {job['ended'] - job['started']:.1f} s, {len(during)} requests answered meanwhile, slowest "
          f"{max(during or [0]):.3f} s")
    assert len(during) >= 4, answered  # one full round of requests while the worker was fitting
    assert max(during) < 3.0, max(during)  # a blocked event loop would hold these for the whole fit


def test_only_offered_backbones_can_be_fitted(client):
    assert client.get("/backbones").json() == ["toy:clip"]
    r = client.post("/fit", json={"dataset": "toy", "method": "lpp", "shots": 1, "backbone": "open_clip:ViT-B-32"})
    assert r.status_code == 400 and "not offered" in r.json()["detail"]
    assert {"lpp", "tip_adapter", "gda"} <= {m["name"] for m in client.get("/methods").json()}
    assert not {"tda", "inmap", "coop", "clip_lora"} & {m["name"] for m in client.get("/methods").json()}
