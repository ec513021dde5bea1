"""Headless Chromium (Debian's `chromium`, driven by Playwright) opens the page, fits on the toy dataset, uploads an
image and reads the prediction; a screenshot of each step is kept in the test's tmp folder.

Set KSHOT_README_SHOT=path to also write the last screenshot there (how docs/img/serve.png was made).
"""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="needs Debian's chromium (.ci/run installs it)")


def test_pick_dataset_fit_upload_and_read_prediction(server, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 820, "height": 640})
        page.goto(server["url"] + "/")
        page.wait_for_selector("#dataset option", state="attached")
        page.select_option("#dataset", "toy")
        page.select_option("#method", "lpp")
        page.fill("#shots", "2")
        page.screenshot(path=shots / "1-open.png")
        page.click("#fit")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=120_000)
        status = page.text_content("#status")
        assert "test top-1" in status, status
        page.screenshot(path=shots / "2-fitted.png")
        img = next(sorted((server["base"] / "data" / "toy" / "test").iterdir())[0].iterdir())
        page.set_input_files("#file", str(img))
        page.wait_for_selector("#top1", timeout=30_000)
        top1 = page.text_content("#top1")
        page.screenshot(path=shots / "3-predicted.png")
        browser.close()
    classes = sorted(p.name for p in (server["base"] / "data" / "toy" / "train").iterdir())
    assert top1 in [c.replace("_", " ") for c in classes] or top1 in classes, top1
    assert all((shots / f).stat().st_size > 5000 for f in ("1-open.png", "2-fitted.png", "3-predicted.png"))
    if os.environ.get("KSHOT_README_SHOT"):
        shutil.copy(shots / "3-predicted.png", os.environ["KSHOT_README_SHOT"])
