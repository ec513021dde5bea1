"""The zip unpacker and path checks on their own: traversal, links, bombs and lying headers are refused, and nothing
is left behind."""

import io
import stat
import zipfile

import pytest

from kshot.errors import DataError
from kshot.serve.safety import ZipLimits, dataset_name, file_inside, safe_unzip


def _zip(members, compression=zipfile.ZIP_DEFLATED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members:
            if isinstance(data, zipfile.ZipInfo):
                zf.writestr(data, name)
            else:
                zf.writestr(name, data)
    return buf.getvalue()


def test_a_single_top_folder_is_stripped_and_files_land_inside(tmp_path):
    data = _zip([("toy/train/a/0.png", b"x"), ("toy/test/a/0.png", b"y")])
    out = safe_unzip(data, tmp_path / "ds")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "test/a/0.png", "train/a/0.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


@pytest.mark.parametrize("name, words", [("../evil.txt", "'..'"), ("toy/../../evil.txt", "'..'"),
                                         ("/etc/evil.txt", "absolute"), ("C:/evil.txt", "absolute"),
                                         ("toy\\..\\evil.txt", "absolute")])
def test_traversal_members_are_refused_before_writing(tmp_path, name, words):
    data = _zip([("toy/train/a/0.png", b"x"), (name, b"evil")])
    with pytest.raises(DataError, match=words):
        safe_unzip(data, tmp_path / "out" / "ds")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out").exists()


def test_symlink_member_is_refused(tmp_path):
    info = zipfile.ZipInfo("toy/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="symbolic link"):
        safe_unzip(buf.getvalue(), tmp_path / "ds")


def test_zip_bomb_by_ratio_and_by_total_size(tmp_path):
    bomb = _zip([("toy/zeros.bin", b"\0" * 30_000_000)])  # ~30 KB packed, 1000x
    with pytest.raises(DataError, match="zip bomb"):
        safe_unzip(bomb, tmp_path / "a", ZipLimits(max_bytes=10**9, max_ratio=100))
    stored = _zip([(f"toy/{i}.bin", bytes(range(256)) * 4096) for i in range(3)], zipfile.ZIP_STORED)  # 3 MiB
    with pytest.raises(DataError, match="unpacks to"):
        safe_unzip(stored, tmp_path / "b", ZipLimits(max_bytes=2_000_000))
    with pytest.raises(DataError, match="members"):
        safe_unzip(_zip([(f"t/{i}", b"") for i in range(5)]), tmp_path / "c", ZipLimits(max_members=4))
    assert not list(tmp_path.iterdir())  # no partial folders left


def test_a_header_that_understates_the_size_is_refused_and_leaves_nothing(tmp_path):
    data = bytearray(_zip([("toy/a.bin", b"\1" * 3_000_000)], zipfile.ZIP_STORED))
    # patch the declared uncompressed size (local header and central directory) down to 10 bytes
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        pos = data.index(sig)
        data[pos + off:pos + off + 4] = (10).to_bytes(4, "little")
    with pytest.raises(DataError, match="unreadable zip"):  # zipfile reads the declared 10 bytes: CRC mismatch
        safe_unzip(bytes(data), tmp_path / "ds", ZipLimits(max_bytes=1_000_000))
    assert not list(tmp_path.iterdir())


def test_not_a_zip_existing_name_and_bad_names(tmp_path):
    with pytest.raises(DataError, match="not a zip"):
        safe_unzip(b"hello", tmp_path / "ds")
    (tmp_path / "ds").mkdir()
    with pytest.raises(DataError, match="already exists"):
        safe_unzip(_zip([("a", b"x")]), tmp_path / "ds")
    for bad in ("", "..", "a/b", ".hidden", "x" * 80, "a b"):
        with pytest.raises(DataError):
            dataset_name(bad)
    assert dataset_name("toy_2.v1") == "toy_2.v1"


def test_file_inside_refuses_escapes(tmp_path):
    (tmp_path / "ds" / "train").mkdir(parents=True)
    (tmp_path / "ds" / "train" / "a.png").write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"x")
    (tmp_path / "ds" / "link.png").symlink_to(tmp_path / "secret.png")
    assert file_inside(tmp_path / "ds", "train/a.png") == (tmp_path / "ds" / "train" / "a.png").resolve()
    for bad in ("../secret.png", "/etc/passwd", "train/../../secret.png", "link.png", "train/none.png"):
        with pytest.raises(DataError):
            file_inside(tmp_path / "ds", bad)
