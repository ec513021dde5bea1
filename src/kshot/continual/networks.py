"""Build the shared network of a continual run (any timm CNN, or a tiny test network) and find its prunable layers.

A network here is a headless feature extractor: `backbone(x [B, 3, H, W]) -> [B, D]` (timm with `num_classes=0`);
task heads live beside it. Prunable layers are the plain `nn.Conv2d` and `nn.Linear` modules of the backbone (for
VGG-16: 13 convs plus fc6/fc7, which timm implements as convs), as in `arunmallya/packnet`'s `SparsePruner`.

Tiny networks for tests and the offline demo use timm's own VGG/ResNet classes at reduced widths, so the code paths
are the timm ones: `tiny_vgg`, `tiny_vgg_bn` (VGG with BatchNorm), `tiny_resnet` (ResNet with BasicBlocks).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from kshot.errors import CheckpointError, ConfigError
from kshot.registry import Registry

from .config import NetworkConfig

log = logging.getLogger(__name__)

NETWORKS: Registry[Callable[[NetworkConfig], nn.Module]] = Registry("continual network")
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass
class BuiltNetwork:
    """A headless backbone and what came with it.

    Attributes:
        arch: the architecture name it was built from.
        backbone: `forward(x [B, 3, H, W]) -> features [B, feature_dim]`.
        feature_dim: width of the features (the heads' input).
        classifier: the pretrained classifier when the model had one (e.g. ImageNet's 1000-way fc), else None;
            used as the head of the optional initial retraining.
    """

    arch: str
    backbone: nn.Module
    feature_dim: int
    classifier: nn.Linear | None


def _tiny_vgg(cfg: NetworkConfig, norm: bool) -> nn.Module:
    from timm.layers import ClassifierHead
    from timm.models.vgg import VGG, ConvMlp

    drop = cfg.drop_rate or 0.0
    model = VGG([8, "M", 16, "M", 32, "M"], num_classes=0, norm_layer=nn.BatchNorm2d if norm else None, drop_rate=drop,
                mlp_ratio=1 / 512)  # a small throw-away fc6 (VGG fixes fc7 at 4096 wide), replaced below
    model.pre_logits = ConvMlp(32, 32, kernel_size=1, mlp_ratio=1.0, drop_rate=drop)  # fc6/fc7 at 32 wide
    model.head = ClassifierHead(32, 0, pool_type="avg", drop_rate=drop)
    model.num_features = model.head_hidden_size = 32
    return model


def _tiny_resnet(cfg: NetworkConfig) -> nn.Module:
    from timm.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, [1, 1, 1, 1], channels=(8, 16, 32, 64), stem_width=8, num_classes=0,
                  drop_rate=cfg.drop_rate or 0.0)


NETWORKS.add("tiny_vgg", lambda c: _tiny_vgg(c, norm=False), "timm VGG, 3 convs of 8-32 channels, fc6/fc7 32 wide")
NETWORKS.add("tiny_vgg_bn", lambda c: _tiny_vgg(c, norm=True), "tiny_vgg with BatchNorm after each conv")
NETWORKS.add("tiny_resnet", _tiny_resnet, "timm ResNet, one BasicBlock per stage, 8-64 channels")


def _timm_model(cfg: NetworkConfig) -> nn.Module:
    import timm

    if not timm.is_model(cfg.arch):
        raise ConfigError(f"network.arch: unknown architecture {cfg.arch!r}: neither a tiny network "
                          f"({', '.join(NETWORKS.names())}) nor a timm model (see timm.list_models())")
    kwargs: dict[str, Any] = {}
    if cfg.drop_rate is not None:
        kwargs["drop_rate"] = cfg.drop_rate
    pretrained = cfg.pretrained or cfg.weights is not None
    if cfg.weights is not None:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise CheckpointError(f"network.weights: file not found: {path}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        return timm.create_model(cfg.arch, pretrained=pretrained, **kwargs)
    except Exception as e:  # timm raises many types (HTTP, runtime, key errors) for missing weights
        if not pretrained:
            raise ConfigError(f"cannot build timm model {cfg.arch!r}: {e}") from None
        raise CheckpointError(
            f"could not load pretrained weights for timm model {cfg.arch!r} ({str(e).strip()[:300]}). Offline, give a "
            f"local file with `network.weights: /path/{cfg.arch}.safetensors`, or `network.pretrained: false`"
        ) from None


def build_network(cfg: NetworkConfig, seed: int = 0) -> BuiltNetwork:
    """Build the headless backbone of `cfg`; random initialisation is seeded by `seed` (global RNG left untouched).

    Raises:
        ConfigError: unknown architecture, or a prunable layer type PackNet cannot mask.
        CheckpointError: pretrained weights unavailable or not fitting.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.arch in NETWORKS:
            model = NETWORKS.get(cfg.arch)(cfg)
        else:
            model = _timm_model(cfg)
    classifier = None
    if hasattr(model, "get_classifier") and getattr(model, "num_classes", 0):
        head = model.get_classifier()
        if isinstance(head, nn.Linear):
            classifier = copy.deepcopy(head)
        model.reset_classifier(0)
    feature_dim = int(getattr(model, "head_hidden_size", None) or getattr(model, "num_features"))
    prunable_layers(model)  # fail early on layer types we cannot mask
    model.eval()
    return BuiltNetwork(cfg.arch, model, feature_dim, classifier)


def prunable_layers(backbone: nn.Module) -> dict[str, nn.Module]:
    """Ordered `name -> module` of the plain Conv2d/Linear layers of `backbone`.

    Raises:
        ConfigError: a Conv/Linear subclass with its own forward (e.g. weight-standardised convs), whose weights a
            mask applied at `forward` would bypass.
    """
    out: dict[str, nn.Module] = {}
    for name, mod in backbone.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            base = nn.Conv2d if isinstance(mod, nn.Conv2d) else nn.Linear
            if type(mod).forward is not base.forward:
                raise ConfigError(f"layer {name!r} is a {type(mod).__name__} with its own forward; PackNet masks only "
                                  "plain nn.Conv2d / nn.Linear layers")
            out[name] = mod
    if not out:
        raise ConfigError(f"{type(backbone).__name__} has no Conv2d/Linear layer to prune")
    return out


def norm_parameters(backbone: nn.Module) -> set[int]:
    """ids of the parameters of normalisation layers (BatchNorm, GroupNorm, LayerNorm)."""
    return {id(p) for m in backbone.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}


def set_train_mode(backbone: nn.Module, train_norm: bool) -> None:
    """`backbone.train()` with normalisation layers back in eval mode unless `train_norm` (official `train_nobn`)."""
    backbone.train()
    if not train_norm:
        for m in backbone.modules():
            if isinstance(m, NORM_TYPES):
                m.eval()


def layer_signature(backbone: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(name, weight shape) of every prunable layer: what a mask file must match."""
    return [(n, tuple(m.weight.shape)) for n, m in prunable_layers(backbone).items()]
