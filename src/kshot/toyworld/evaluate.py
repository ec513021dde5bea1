"""Quality report of a tiny CLIP on its world: zero-shot per domain and a linear probe by shots.

Used to record the measured accuracies of a pretrained checkpoint next to it (toy_clip.json, README). The probe is a
plain scikit-learn logistic regression on L2-normalised features; the test split is only scored, never tuned on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kshot.backbones.base import PreprocessCfg
from kshot.toyworld.generator import World
from kshot.toyworld.model import images_to_tensor

PROMPT = "a photo of a {}."


@torch.no_grad()
def encode_images(
    model: torch.nn.Module, images: np.ndarray, pre: PreprocessCfg, batch_size: int = 1024
) -> torch.Tensor:
    """uint8 images [N, S, S, 3] -> L2-normalised image features [N, D] (fp32, CPU)."""
    out = [F.normalize(model.encode_image(images_to_tensor(images[i : i + batch_size], pre)).float(), dim=-1)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def encode_texts(model: torch.nn.Module, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """Texts -> L2-normalised text features [T, D]."""
    return F.normalize(model.encode_text(tokenizer(texts)).float(), dim=-1)


def zero_shot_accuracy(img: torch.Tensor, labels: np.ndarray, txt: torch.Tensor) -> float:
    """Top-1 accuracy of argmax over cosine similarities img [N, D] x txt [C, D] against labels [N] (local ids)."""
    pred = (img @ txt.t()).argmax(dim=1).numpy()
    return float((pred == labels).mean())


def linear_probe_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    shots: int,
    seed: int,
    c: float = 10.0,
) -> float:
    """Accuracy of a logistic regression fitted on `shots` images per class drawn (with `seed`) from the pool."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.nonzero(train_y == k)[0], shots, replace=False) for k in np.unique(train_y)])
    clf = LogisticRegression(C=c, max_iter=2000).fit(train_x[idx], train_y[idx])
    return float((clf.predict(test_x) == test_y).mean())


def measure(
    model: torch.nn.Module,
    tokenizer: Any,
    pre: PreprocessCfg,
    world: World | None = None,
    n_test: int = 25,
    n_train: int = 16,
    shots: tuple[int, ...] = (1, 2, 4, 8, 16),
    seeds: tuple[int, ...] = (1, 2, 3),
    split_seed: int = 12345,
) -> dict[str, Any]:
    """Accuracies of a model on a fresh split of the world (seed `split_seed`, not used in pretraining).

    Returns a dict with zero-shot accuracies (Shapes 48-way, all 64 colour x shape combos with base/held-out parts,
    Creatures 16-way) and linear-probe accuracies (mean over `seeds`) on Creatures and the 64 combos by shots.
    """
    world = world or World()
    model.eval()
    combos = world.class_ids(["Shapes", "Novel", "Unseen"])
    split = world.make_split(None, n_train=n_train, n_val=0, n_test=n_test, seed=split_seed)
    # Unseen classes have no training pool in splits; render one for the 64-way probe.
    unseen = world.class_ids("Unseen")
    unseen_train = np.concatenate([world.render_class(c, n_train, "train", split_seed) for c in unseen])
    te_x = encode_images(model, split.test.images, pre)
    tr_x = torch.cat([encode_images(model, split.train.images, pre), encode_images(model, unseen_train, pre)])
    tr_y = np.concatenate([split.train.labels, np.repeat(np.array(unseen), n_train)])
    txt = encode_texts(model, tokenizer, [PROMPT.format(n) for n in world.classnames])
    te_y = split.test.labels  # local ids == world ids (all domains, id order)

    def subset(ids: list[int], x: torch.Tensor, y: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        m = np.isin(y, ids)
        remap = {c: i for i, c in enumerate(ids)}
        return x[torch.from_numpy(m)], np.array([remap[c] for c in y[m]], dtype=np.int64)

    res: dict[str, Any] = {"n_test_per_class": n_test, "prompt": PROMPT, "split_seed": split_seed}
    for name, ids in (("shapes48", world.class_ids("Shapes")), ("combos64", combos),
                      ("creatures", world.class_ids("Creatures")), ("all", list(range(len(world.classes))))):
        x, y = subset(ids, te_x, te_y)
        res[f"zs_{name}"] = zero_shot_accuracy(x, y, txt[ids])
    x, y = subset(combos, te_x, te_y)
    pred = (x @ txt[combos].t()).argmax(1).numpy()
    held = np.array([world.classes[c].held_out for c in combos])
    res["zs_combos64_base"] = float((pred == y)[~held[y]].mean())
    res["zs_combos64_new"] = float((pred == y)[held[y]].mean())
    for name, ids in (("creatures", world.class_ids("Creatures")), ("combos64", combos)):
        trx, try_ = subset(ids, tr_x, tr_y)
        tex, tey = subset(ids, te_x, te_y)
        res[f"lp_{name}"] = {
            str(k): float(np.mean([linear_probe_accuracy(trx.numpy(), try_, tex.numpy(), tey, k, s) for s in seeds]))
            for k in shots if k <= n_train
        }
    return res
