import json

import pytest
import torch
from PIL import Image

from kshot.data.dataset import Dataset, Item
from kshot.features import AugmentPolicy, ExtractConfig, FeatureStore, extract_features
from kshot.features import cache as cache_mod
from tests.helpers import tiny_backbone, write_image_folder


def _dataset(tmp_path):
    root = write_image_folder(tmp_path / "imgs", {"red": [(200, 20, 20)] * 3, "blue": [(20, 20, 200)] * 3})
    items = [Item(f"{c}/{i}.png", label) for label, c in enumerate(["red", "blue"]) for i in range(3)]
    return Dataset(root, items, ["red", "blue"], name="colours")


@pytest.fixture
def store(tmp_path):
    return FeatureStore(tmp_path / "cache", chunk=4, extract=ExtractConfig(batch_size=2, num_workers=0, progress=False))


def test_features_normalised_and_match_direct_encoding(tmp_path, store):
    ds, bb = _dataset(tmp_path), tiny_backbone()
    fs = store.get(bb, ds)
    assert fs.features.shape == (6, 16) and fs.labels.tolist() == [0, 0, 0, 1, 1, 1]
    torch.testing.assert_close(fs.features.norm(dim=1), torch.ones(6))
    from kshot.data.images import load_image

    x = torch.stack([bb.preprocess(load_image(ds.abspath(i))) for i in range(6)])
    ref = torch.nn.functional.normalize(bb.encode_image(x), dim=-1)
    torch.testing.assert_close(fs.features, ref, atol=1e-5, rtol=0)


def test_cache_reuse_and_rebuild_on_changed_key(tmp_path, store, monkeypatch):
    ds, bb = _dataset(tmp_path), tiny_backbone()
    first = store.get(bb, ds)
    assert store.last_hit is False
    calls = []
    real = cache_mod.extract_features
    monkeypatch.setattr(cache_mod, "extract_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = store.get(bb, ds)
    assert store.last_hit is True and not calls
    torch.testing.assert_close(first.features, again.features)
    # another backbone (different weights -> different fingerprint) rebuilds
    store.get(tiny_backbone(seed=1), ds)
    assert store.last_hit is False and calls
    # a changed image file (size/mtime) rebuilds and gives different features
    calls.clear()
    Image.new("RGB", (12, 12), (0, 255, 0)).save(ds.abspath(0))
    changed = store.get(bb, ds)
    assert store.last_hit is False and calls
    assert not torch.allclose(changed.features[0], first.features[0])


def test_interrupted_run_resumes_from_parts(tmp_path, store, monkeypatch):
    ds, bb = _dataset(tmp_path), tiny_backbone()
    real = cache_mod.extract_features
    n_calls = {"n": 0}

    def crash_on_second(*a, **k):
        n_calls["n"] += 1
        if n_calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(cache_mod, "extract_features", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        store.get(bb, ds)
    entry = store.entry_dir(bb, ds)
    assert not (entry / "manifest.json").exists()  # never looks complete
    assert len(list(entry.glob("part-*.safetensors"))) == 1
    assert not list(entry.glob("*.tmp*"))
    calls = []
    monkeypatch.setattr(cache_mod, "extract_features", lambda *a, **k: calls.append(list(a[2])) or real(*a, **k))
    fs = store.get(bb, ds)
    assert calls == [[4, 5]]  # only the missing chunk is recomputed
    fresh = FeatureStore(tmp_path / "cache2", extract=ExtractConfig(num_workers=0, progress=False)).get(bb, ds)
    torch.testing.assert_close(fs.features, fresh.features)


def test_torn_feature_file_is_rebuilt(tmp_path, store):
    ds, bb = _dataset(tmp_path), tiny_backbone()
    ref = store.get(bb, ds)
    f = store.entry_dir(bb, ds) / "features.safetensors"
    f.write_bytes(f.read_bytes()[:50])
    fs = store.get(bb, ds)
    assert store.last_hit is False
    torch.testing.assert_close(fs.features, ref.features)


def test_bad_images_are_skipped_and_recorded(tmp_path, store):
    ds, bb = _dataset(tmp_path), tiny_backbone()
    ds.abspath(1).write_bytes(b"")
    ds.abspath(4).write_bytes(ds.abspath(4).read_bytes()[:30])
    fs = store.get(bb, ds)
    assert len(fs) == 4 and "red/1.png" not in fs.paths
    assert [p for p, _ in fs.skipped] == ["red/1.png", "blue/1.png"]
    manifest = json.loads((store.entry_dir(bb, ds) / "manifest.json").read_text())
    assert [s["path"] for s in manifest["skipped"]] == ["red/1.png", "blue/1.png"]
    again = store.get(bb, ds)
    assert store.last_hit and [p for p, _ in again.skipped] == ["red/1.png", "blue/1.png"]


def test_augmented_views_are_cached_and_deterministic(tmp_path, store):
    ds, bb = _dataset(tmp_path), tiny_backbone()
    pol = AugmentPolicy("tip", views=3, seed=7)
    fs = store.get(bb, ds, pol)
    assert fs.aug_features.shape == (3, 6, 16)
    assert not torch.allclose(fs.aug_features[0], fs.aug_features[1])
    other = FeatureStore(tmp_path / "c3", chunk=2, extract=ExtractConfig(batch_size=5, num_workers=0, progress=False))
    torch.testing.assert_close(other.get(bb, ds, pol).aug_features, fs.aug_features)
    direct = extract_features(bb, ds, [2, 3], ExtractConfig(num_workers=0, progress=False), pol, view=1)
    torch.testing.assert_close(direct.features, fs.aug_features[1, 2:4])


def test_policy_validation():
    from kshot.errors import ConfigError

    with pytest.raises(ConfigError):
        AugmentPolicy("mixup", 2)
    with pytest.raises(ConfigError):
        AugmentPolicy("tip", 0)


def test_two_threads_filling_one_entry_compute_it_once_and_agree(tmp_path, monkeypatch):
    import threading
    import time

    ds, bb = _dataset(tmp_path), tiny_backbone()
    calls, real = [], cache_mod.extract_features

    def slow(*a, **k):  # widen the window in which a second thread would race the first
        calls.append(threading.get_ident())
        time.sleep(0.2)
        return real(*a, **k)

    monkeypatch.setattr(cache_mod, "extract_features", slow)
    out, errors = {}, []

    def fill(i):
        try:
            store = FeatureStore(tmp_path / "cache", chunk=4,
                                 extract=ExtractConfig(batch_size=2, num_workers=0, progress=False))
            out[i] = (store.get(bb, ds), store.last_hit)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=fill, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(set(calls)) == 1 and len(calls) == 2  # one thread computed both parts; the other read the join
    assert sorted(hit for _, hit in out.values()) == [False, True]
    torch.testing.assert_close(out[0][0].features, out[1][0].features)
    entry = next((tmp_path / "cache").iterdir())
    assert sorted(p.name for p in entry.iterdir()) == ["features.safetensors", "manifest.json"]
