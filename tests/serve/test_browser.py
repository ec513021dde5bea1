"""Headless Chromium (Debian's `chromium`, driven by Playwright) opens the page, picks the toy dataset, looks at the
shot gallery and drops a shot, fits, reads the report, uploads two images and reads the predictions; a screenshot of
each step is kept in the test's tmp folder (pytest's basetemp, never the repo).

Set KSHOT_README_SHOT=path to also write the last screenshot there, palette-reduced (how docs/img/serve.png was
made: `KSHOT_README_SHOT=docs/img/serve.png pytest tests/serve/test_browser.py`).
"""

import os
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install 'kshot[test]')")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                reason="needs Debian's chromium at /usr/bin/chromium (.ci/run installs it)")

ALL_IMAGES_LOADED = ("sel => { const imgs = [...document.querySelectorAll(sel)]; "
                     "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }")


def test_pick_dataset_gallery_fit_report_upload_and_read_prediction(server, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    train = server["base"] / "data" / "toy" / "train"
    classes = sorted(p.name for p in train.iterdir())
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 940, "height": 900})
        page.goto(server["url"] + "/")
        page.wait_for_selector("#dataset option", state="attached")
        page.wait_for_selector("#method option[value='lpp'], #method option:text-is('lpp')", state="attached")
        page.select_option("#dataset", "toy")
        page.select_option("#method", "lpp")
        page.fill("#shots", "2")
        page.click("#draw")
        page.wait_for_function(ALL_IMAGES_LOADED, arg=".shot img", timeout=30_000)
        assert page.locator(".shot").count() == 2 * len(classes)
        first_draw = sorted(page.eval_on_selector_all(".shot", "els => els.map(e => e.dataset.path)"))
        page.click("#redraw")  # seed 2: another draw
        page.wait_for_selector("#gallery[data-seed='2'] .shot", timeout=30_000)
        page.wait_for_function(ALL_IMAGES_LOADED, arg=".shot img", timeout=30_000)
        assert page.input_value("#seed") == "2"
        assert sorted(page.eval_on_selector_all(".shot", "els => els.map(e => e.dataset.path)")) != first_draw
        dropped = page.locator(".shot").first.get_attribute("data-path")
        page.locator(".shot button").first.click()
        assert "dropped" in (page.locator(".shot").first.get_attribute("class") or "")
        page.screenshot(path=shots / "1-gallery.png")

        page.click("#fit")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=120_000)
        status = page.text_content("#status")
        assert "test top-1" in status, status
        page.wait_for_function(ALL_IMAGES_LOADED, arg="#confusion", timeout=30_000)
        assert page.locator("#report table tr").count() == len(classes)  # per-class recall rows
        n_mistakes = int(re.search(r"Mistakes \((\d+)\)", page.text_content("#report")).group(1))
        assert page.locator(".mistake").count() == n_mistakes
        if n_mistakes:
            page.wait_for_function(ALL_IMAGES_LOADED, arg=".mistake img", timeout=30_000)
        page.screenshot(path=shots / "2-fitted.png", full_page=True)

        test_dirs = sorted((server["base"] / "data" / "toy" / "test").iterdir())
        imgs = [str(sorted(d.iterdir())[0]) for d in test_dirs[:2]]
        page.set_input_files("#file", imgs)  # two images at once: one top-5 table each
        page.wait_for_selector("#top1", timeout=30_000)
        page.wait_for_function("document.querySelectorAll('#result table').length === 2", timeout=30_000)
        assert page.locator("#result table").first.locator("tr").count() == 5
        top1 = page.text_content("#top1")
        page.screenshot(path=shots / "3-predicted.png", full_page=True)
        browser.close()
    run = re.match(r"done: (\S+)", status).group(1)
    used = (server["cfg"].runs_dir / run / "shots.txt").read_text()
    assert dropped.split("/", 1)[1] not in used and len(used.split()) // 2 == 2 * len(classes) - 1
    assert top1 in classes, top1
    assert all((shots / f).stat().st_size > 5000 for f in ("1-gallery.png", "2-fitted.png", "3-predicted.png"))
    if os.environ.get("KSHOT_README_SHOT"):
        from PIL import Image

        Image.open(shots / "3-predicted.png").convert("RGB").quantize(128).save(os.environ["KSHOT_README_SHOT"],
                                                                             optimize=True)
