"""PackNet learner: exact magnitude pruning, disjoint masks, frozen weights under SGD momentum and weight decay,
zero-restarting freed weights, frozen biases/BN, state-machine guards, mask files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kshot.continual.config import NetworkConfig
from kshot.continual.networks import build_network
from kshot.continual.packnet import FREE, PRETRAINED, PackNet, magnitude_prune, owner_id
from kshot.errors import CheckpointError, ConfigError, KshotError


def _packnet(arch: str = "tiny_vgg") -> PackNet:
    return PackNet(build_network(NetworkConfig(arch=arch, pretrained=False), seed=0))


def _train_steps(net: PackNet, index: int, steps: int = 4, wd: float = 0.01) -> None:
    """A few SGD steps (momentum 0.9, weight decay) on random data for task `index`."""
    g = torch.Generator().manual_seed(index + 10)
    opt = torch.optim.SGD(net.param_groups(index, wd), lr=0.02, momentum=0.9)
    net.train_mode(index)
    n_out = net.head_for(index).out_features
    for _ in range(steps):
        x = torch.randn(8, 3, 8, 8, generator=g)
        y = torch.randint(0, n_out, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(net.forward(x, index), y).backward()
        net.before_step(index, wd)
        opt.step()
    net.freeze()


def test_magnitude_prune_frees_exactly_round_p_n_with_ties() -> None:
    w = torch.tensor([[0.5, -0.1, 0.1, 0.1], [2.0, -0.1, 3.0, 0.0]])
    cand = torch.tensor([[True, True, True, True], [True, True, True, False]])  # 7 candidates; 0.0 is not one
    chosen = magnitude_prune(w, cand, 0.5)  # round(3.5) = 4 smallest |w| among candidates: four 0.1-ties
    assert int(chosen.sum()) == 4
    assert not chosen[1, 3]  # never a non-candidate, however small
    assert not chosen[0, 0] and not chosen[1, 0] and not chosen[1, 2]
    assert int(magnitude_prune(w, cand, 0.2).sum()) == 1  # round(1.4) = 1 despite four tied values


def test_masks_disjoint_capacity_sums_and_earlier_weights_untouched() -> None:
    net = _packnet()
    net.prune_pretrained(0.5)
    snapshots = []
    for index in range(3):
        net.begin_task(index, f"t{index}", 3, torch.Generator().manual_seed(index))
        before = {n: m.weight.detach().clone() for n, m in net.layers.items()}
        _train_steps(net, index)
        changed = {n: m.weight.detach() != before[n] for n, m in net.layers.items()}
        oid = owner_id(index)
        for n, mask in net.masks.items():
            assert not (changed[n] & (mask != oid)).any(), f"{n}: a weight not owned by task {index} moved"
        assert any(c.any() for c in changed.values()), f"task {index} did not train its own weights"
        net.prune(index, 0.5)
        for n, mask in net.masks.items():
            assert (net.layers[n].weight[mask == FREE] == 0).all()  # freed weights are zero
        net.end_task(index)
        snapshots.append({n: m.weight.detach().clone() for n, m in net.layers.items()})
    # weights owned by the pretrained network and tasks 0..i never change after task i
    final = {n: m.weight.detach() for n, m in net.layers.items()}
    for i, snap in enumerate(snapshots):
        for n, mask in net.masks.items():
            frozen = (mask >= PRETRAINED) & (mask <= owner_id(i))
            assert torch.equal(final[n][frozen], snap[n][frozen])
    cap = net.capacity()
    for n, row in cap.items():
        assert row["total"] == net.layers[n].weight.numel()
        assert row["free"] + row["pretrained"] + sum(row[f"t{i}"] for i in range(3)) == row["total"]
        assert row["pretrained"] > 0 and all(row[f"t{i}"] > 0 for i in range(3))


def test_freed_weights_restart_at_zero_for_the_next_task() -> None:
    net = _packnet()
    net.prune_pretrained(0.75)
    freed = {n: (m == FREE).clone() for n, m in net.masks.items()}
    net.begin_task(0, "a", 2)
    for n, m in net.masks.items():
        assert (m[freed[n]] == owner_id(0)).all()
        assert (net.layers[n].weight[freed[n]] == 0).all()


def test_biases_and_batchnorm_stay_frozen_and_in_eval_mode() -> None:
    net = _packnet("tiny_vgg_bn")
    net.prune_pretrained(0.5)
    others = {k: v.clone() for k, v in net.backbone.state_dict().items()
              if not any(k == f"{n}.weight" for n in net.layers)}
    net.begin_task(0, "a", 3)
    _train_steps(net, 0)
    net.train_mode(0)
    bns = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    after = net.backbone.state_dict()
    for k, v in others.items():
        assert torch.equal(after[k], v), f"{k} changed while training a task"


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.25])
def test_pruning_ratio_outside_open_unit_interval_is_refused(ratio: float) -> None:
    net = _packnet()
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        net.prune_pretrained(ratio)
    net.begin_task(0, "a", 2)
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        net.prune(0, ratio)


def test_state_machine_guards() -> None:
    net = _packnet()
    with pytest.raises(KshotError, match="cannot prune"):
        net.prune(0, 0.5)
    with pytest.raises(KshotError, match="in order"):
        net.begin_task(1, "b", 2)
    net.begin_task(0, "a", 2)
    with pytest.raises(KshotError, match="cannot begin"):
        net.begin_task(1, "b", 2)
    net.prune(0, 0.5)
    with pytest.raises(KshotError, match="cannot prune"):
        net.prune(0, 0.5)
    net.end_task(0)
    with pytest.raises(KshotError, match="once, before the first task"):
        net.prune_pretrained(0.5)


def test_mask_file_round_trip_and_refusal_from_another_architecture(tmp_path) -> None:
    net = _packnet("tiny_vgg")
    net.prune_pretrained(0.5)
    path = net.save_masks(tmp_path / "masks.safetensors")
    other = _packnet("tiny_vgg")
    other.load_masks(path)
    assert all(torch.equal(other.masks[n], net.masks[n]) for n in net.masks)
    with pytest.raises(CheckpointError, match="another architecture"):
        _packnet("tiny_resnet").load_masks(path)


def test_view_hides_weights_of_later_tasks() -> None:
    net = _packnet()
    net.prune_pretrained(0.5)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    net.begin_task(0, "a", 2)
    _train_steps(net, 0)
    net.prune(0, 0.5)
    net.end_task(0)
    ref = net.logits(x, 0)
    net.begin_task(1, "b", 2)
    _train_steps(net, 1)
    assert torch.equal(net.logits(x, 0), ref)
    with torch.no_grad():
        net.set_view(0)
        feats0 = net.backbone(x)
        net.set_view(1)
        feats1 = net.backbone(x)
    assert not torch.equal(feats0, feats1)  # task 1 sees its own weights on top of task 0's


def test_checkpoint_tensors_from_another_architecture_are_refused() -> None:
    src = _packnet("tiny_vgg")
    with pytest.raises(CheckpointError, match="another architecture"):
        _packnet("tiny_resnet").load_state(src.state_tensors(), src.state_meta(), "ckpt.safetensors")
