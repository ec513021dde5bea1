"""Full-size networks (KSHOT_SLOW=1) and real pretrained weights (KSHOT_ONLINE=1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kshot.continual.config import NetworkConfig
from kshot.continual.networks import build_network
from kshot.continual.packnet import PackNet


def _one_step(net: PackNet, index: int, x: torch.Tensor, y: torch.Tensor) -> None:
    opt = torch.optim.SGD(net.param_groups(index, 5e-4), lr=1e-3, momentum=0.9)
    net.train_mode(index)
    F.cross_entropy(net.forward(x, index), y).backward()
    net.before_step(index, 5e-4)
    opt.step()
    net.freeze()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg16", "vgg16_bn", "resnet50"])
def test_full_size_packnet_keeps_earlier_outputs_bit_identical(arch: str) -> None:
    net = PackNet(build_network(NetworkConfig(arch=arch, pretrained=False, drop_rate=0.5), seed=0))
    assert len(net.layers) == {"vgg16": 15, "vgg16_bn": 15, "resnet50": 53}[arch]  # VGG: 13 convs + fc6/fc7
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 224, 224, generator=g)
    net.prune_pretrained(0.5)
    net.begin_task(0, "a", 5, g)
    _one_step(net, 0, x, torch.tensor([0, 1]))
    net.prune(0, 0.75)
    net.end_task(0)
    ref = net.logits(x, 0)
    net.begin_task(1, "b", 3, g)
    _one_step(net, 1, x, torch.tensor([2, 0]))
    assert torch.equal(net.logits(x, 0), ref)
    for row in net.capacity().values():
        assert row["free"] + row["pretrained"] + row["a"] + row["b"] == row["total"]


@pytest.mark.online
def test_pretrained_vgg16_from_timm_keeps_its_imagenet_classifier() -> None:
    built = build_network(NetworkConfig(arch="vgg16", pretrained=True))
    assert built.classifier is not None and built.classifier.out_features == 1000 and built.feature_dim == 4096
    assert built.classifier.weight.abs().sum() > 0
