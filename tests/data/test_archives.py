"""Downloads through torchvision from a local HTTP server on 127.0.0.1 (no network), and the archive helpers."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import threading
import zipfile

import pytest

from kshot.data import catalog
from kshot.data.archives import download, locate, unpack
from kshot.data.check import check_dataset
from kshot.data.prepare import prepare_dataset
from kshot.errors import DataError
from tests.data.coop_archives import truncate, write_archives


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; yields the base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    httpd.shutdown()


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_prepare_downloads_through_torchvision_and_verifies_md5(server, tmp_path, monkeypatch):
    url, www = server
    write_archives("EuroSAT", www, tmp_path / "s")
    e = catalog.CATALOG["EuroSAT"]
    archive = dataclasses.replace(e.archives[0], md5=_md5(www / "EuroSAT.zip"))
    monkeypatch.setitem(catalog.CATALOG, "EuroSAT", dataclasses.replace(e, classes=3, archives=(archive,)))
    res = prepare_dataset("eurosat", tmp_path / "DATA", mirror=url)
    assert (tmp_path / "DATA" / ".downloads" / "eurosat" / "EuroSAT.zip").is_file()
    assert res.manifest["classes"] == 3 and check_dataset("eurosat", tmp_path / "DATA").ok


def test_download_with_wrong_md5_is_refused(server, tmp_path):
    url, www = server
    write_archives("EuroSAT", www, tmp_path / "s")  # not the real EuroSAT.zip: its MD5 differs from the catalog's
    with pytest.raises(DataError, match="download of .*EuroSAT.zip failed"):
        download(catalog.CATALOG["EuroSAT"].archives[0], tmp_path / "dl", mirror=url)


def test_wrapper_archive_is_accepted_in_place_of_the_inner_one(tmp_path):
    write_archives("Caltech101", tmp_path / "x", tmp_path / "s")
    inner = tmp_path / "x" / "101_ObjectCategories.tar.gz"
    (tmp_path / "dl").mkdir()
    with zipfile.ZipFile(tmp_path / "dl" / "caltech-101.zip", "w") as zf:  # what torchvision downloads
        zf.write(inner, "caltech-101/101_ObjectCategories.tar.gz")
    found = locate(catalog.CATALOG["Caltech101"].archives[0], tmp_path / "dl", tmp_path / "scratch")
    assert found == tmp_path / "scratch" / "101_ObjectCategories.tar.gz" and found.read_bytes() == inner.read_bytes()
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["caltech-101.zip"]  # the user's folder untouched


def test_truncated_zip_and_tar_are_named(tmp_path):
    write_archives("EuroSAT", tmp_path / "a", tmp_path / "s")
    write_archives("DescribableTextures", tmp_path / "a", tmp_path / "t")
    for name in ("EuroSAT.zip", "dtd-r1.0.1.tar.gz"):
        truncate(tmp_path / "a" / name)
        with pytest.raises(DataError, match=f"{name}: truncated or corrupt"):
            unpack(tmp_path / "a" / name, tmp_path / "out")
