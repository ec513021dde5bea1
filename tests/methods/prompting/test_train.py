"""The shared training loop: Dassl's warm-up + cosine schedule, batching, cached augmented views."""

import math
import time

import torch

from kshot.features.featureset import FeatureSet
from kshot.methods.prompting.train import Schedule, coop_epochs, dassl_lr, epoch_batches, epoch_features, train_loop


def test_schedule_warmup_then_cosine_from_base_lr():
    s = Schedule(epochs=10, lr=0.002)
    assert dassl_lr(s, 0) == 1e-5
    assert math.isclose(dassl_lr(s, 1), 0.002)
    assert math.isclose(dassl_lr(s, 6), 0.001)  # half-way through the cosine (t = 5 of 10)
    assert dassl_lr(s, 9) < dassl_lr(s, 8) < dassl_lr(s, 2)
    assert [coop_epochs(k) for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]


def test_batches_drop_last_only_when_enough_items():
    g = torch.Generator().manual_seed(0)
    full = epoch_batches(70, 32, g)
    assert [len(b) for b in full] == [32, 32] and len(set(torch.cat(full).tolist())) == 64
    assert [len(b) for b in epoch_batches(20, 32, g)] == [20]


def test_epoch_features_draw_one_cached_view_per_item():
    n, d, v = 6, 4, 3
    base = torch.zeros(n, d)
    aug = torch.arange(v, dtype=torch.float32)[:, None, None].expand(v, n, d).clone() + 1
    fs = FeatureSet(base, torch.zeros(n, dtype=torch.long), [str(i) for i in range(n)], aug_features=aug)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([epoch_features(fs, g)[:, 0] for _ in range(20)])
    assert set(draws.unique().tolist()) == {1.0, 2.0, 3.0}  # views only, every view used
    plain = FeatureSet(base, fs.labels, fs.paths)
    assert torch.equal(epoch_features(plain, g), base)


def test_train_loop_minimises_a_quadratic_and_reports_every_step():
    w = torch.nn.Parameter(torch.zeros(4))
    target = torch.ones(4)
    fs = FeatureSet(torch.zeros(8, 4), torch.zeros(8, dtype=torch.long), [str(i) for i in range(8)])
    losses = train_loop([w], lambda x, y: ((w - target) ** 2).sum(), fs,
                        Schedule(epochs=30, batch_size=4, lr=0.1, weight_decay=0.0, warmup_epochs=0),
                        torch.Generator().manual_seed(0), torch.device("cpu"))
    assert len(losses) == 60 and losses[-1] < 0.05 * losses[0]


def test_train_loop_shows_epoch_progress_unless_quiet(capsys):
    from kshot import progress

    w = torch.nn.Parameter(torch.zeros(4))
    fs = FeatureSet(torch.zeros(8, 4), torch.zeros(8, dtype=torch.long), [str(i) for i in range(8)])

    def slow_loss(x, y):
        time.sleep(0.07)  # epochs longer than tqdm's redraw interval
        return ((w - 1) ** 2).sum()

    def run():
        train_loop([w], slow_loss, fs, Schedule(epochs=3, batch_size=4, warmup_epochs=0),
                   torch.Generator().manual_seed(0), torch.device("cpu"), name="coop")

    run()
    err = capsys.readouterr().err
    assert "coop training" in err and "2/3" in err and "loss=" in err  # epochs counted, last loss shown
    progress.set_quiet(True)
    try:
        run()
    finally:
        progress.set_quiet(False)
    assert "coop training" not in capsys.readouterr().err
