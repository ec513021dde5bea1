"""PackNet (Mallya & Lazebnik, "PackNet: Adding Multiple Tasks to a Single Network by Iterative Pruning", CVPR 2018).

One network holds several tasks. Every weight of every prunable layer (plain Conv2d/Linear of the backbone) has an
owner, stored as a uint8 mask beside it: 0 = free, 1 = the pretrained network, k + 2 = task k. Task t sees the
weights whose owner is in 1..t+2 (everything older than it, never anything newer); while it trains only its own
weights get gradients, and the weight decay is applied to those only, so older weights do not move by a single bit
(the optimizer is rebuilt per phase, so momentum buffers of frozen weights stay zero). After training, the lowest
fraction `p` (by |w|) of the task's own weights in each layer is freed: set to zero and owner 0; the next task
starts from those zeros. Biases and normalisation layers belong to the pretrained network: they train only in the
optional initial retraining and are frozen (BN in eval mode) for every task, as in the official code
(`arunmallya/packnet`, `train_nobn`, biases not trained). One classification head per task.

Masking happens at forward time (`torch.where(visible, weight, 0)`), so the stored weights are never rewritten for
evaluation. The learner is a guarded state machine: idle -> training -> pruned -> idle, per task.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from kshot.errors import CheckpointError, ConfigError, KshotError

from .learners import INITIAL, INITIAL_HEAD, LEARNERS, Learner
from .networks import BuiltNetwork, layer_signature, norm_parameters, set_train_mode

log = logging.getLogger(__name__)

FREE, PRETRAINED = 0, 1
MASK_FORMAT = "kshot.packnet.masks/1"


def owner_id(index: int) -> int:
    """Mask value of task `index` (INITIAL = -1 -> the pretrained network, 1)."""
    return PRETRAINED if index == INITIAL else index + 2


def check_ratio(ratio: float, what: str = "pruning ratio") -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) < 1.0:
        raise ConfigError(f"{what} must be in (0, 1), got {ratio!r}")


def magnitude_prune(weight: torch.Tensor, candidates: torch.Tensor, ratio: float) -> torch.Tensor:
    """Bool mask of the round(ratio * n) entries of `weight` with smallest |w| among `candidates` (n of them).

    Ties at the cut-off are broken by flat index, so exactly that many entries are chosen (the official code's
    `abs <= kth value` can free more when values tie).
    """
    n = int(candidates.sum())
    k = int(round(ratio * n))
    if k == 0:
        return torch.zeros_like(candidates)
    mag = weight.detach().abs()
    cutoff = mag[candidates].float().kthvalue(k).values.to(mag.dtype)
    chosen = candidates & (mag < cutoff)
    need = k - int(chosen.sum())
    if need > 0:
        ties = (candidates & (mag == cutoff)).flatten().nonzero().squeeze(1)[:need]
        flat = chosen.flatten().clone()
        flat[ties] = True
        chosen = flat.view_as(chosen)
    return chosen


@LEARNERS.register("packnet", "iterative pruning: each task owns a disjoint slice of one network's weights")
class PackNet(Learner):
    """The PackNet learner (see the module docstring). Masks are `self.masks[layer] -> uint8` of weight shape."""

    method = "packnet"

    def __init__(self, built: BuiltNetwork, device: torch.device | str = "cpu"):
        super().__init__(built, device)
        self.masks: dict[str, torch.Tensor] = {
            n: torch.full_like(m.weight, PRETRAINED, dtype=torch.uint8) for n, m in self.layers.items()}
        self.initial_pruned = False
        self._view: int | None = None
        self._visible: dict[str, torch.Tensor | None] = {}  # None: nothing to hide in that layer
        self._not_own: dict[str, torch.Tensor] = {}  # True where the trained task does not own the weight
        self._cache: dict[str, tuple[tuple[int, int], torch.Tensor]] = {}
        for name, mod in self.layers.items():
            mod.forward = self._masked_forward(name, mod)  # instance attribute; class and state_dict unchanged

    # ------------------------------------------------------------ masking

    def _masked_forward(self, name: str, mod: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            w = self._weight(name, mod.weight)
            if isinstance(mod, nn.Conv2d):
                return mod._conv_forward(x, w, mod.bias)
            return F.linear(x, w, mod.bias)

        return forward

    def _weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """The weight as the current view sees it: hidden entries (free or owned by later tasks) read as zero.

        Free weights are zero by construction, so a view with no later task in a layer needs no masking (the case
        of every training step). Without gradients the masked weight is cached until the weight changes.
        """
        if self._view is None:
            raise KshotError("PackNet: no task view set (call set_view / forward(x, index))")
        visible = self._visible[name]
        if visible is None:
            return weight
        if torch.is_grad_enabled() and weight.requires_grad:
            return torch.where(visible, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
        key = (weight.data_ptr(), weight._version)
        hit = self._cache.get(name)
        if hit is None or hit[0] != key:
            hit = (key, torch.where(visible, weight.detach(), torch.zeros((), dtype=weight.dtype,
                                                                          device=weight.device)))
            self._cache[name] = hit
        return hit[1]

    def set_view(self, index: int) -> None:
        """Make the backbone compute task `index`: weights owned by the pretrained network and tasks <= index."""
        oid = owner_id(index)
        if oid != self._view:
            self._visible = {n: ((m >= PRETRAINED) & (m <= oid)) if bool((m > oid).any()) else None
                             for n, m in self.masks.items()}
            self._cache = {}
            self._view = oid

    def _invalidate(self) -> None:
        self._view = None
        self._not_own = {}
        self._cache = {}

    def forward(self, x: torch.Tensor, index: int) -> torch.Tensor:
        self.set_view(index)
        return super().forward(x, index)

    # ------------------------------------------------------------ life cycle

    def prune_pretrained(self, ratio: float) -> dict[str, int]:
        """Free `ratio` of the pretrained weights of every layer (before any task). Returns freed counts per layer."""
        check_ratio(ratio, "schedule.initial_prune")
        self._expect("idle", action="prune the pretrained network")
        if self.task_names or self.initial_pruned:
            raise KshotError("PackNet: the pretrained network can be pruned once, before the first task")
        self.initial_pruned = True
        return self._prune_owner(PRETRAINED, ratio)

    def add_initial_head(self, num_classes: int, generator: torch.Generator | None = None) -> None:
        """Head of the initial retraining: the pretrained classifier when it has `num_classes` outputs, else new."""
        self._expect("idle", action="add the initial head")
        clf = self.pretrained_classifier
        if clf is not None and clf.out_features == num_classes and clf.in_features == self.feature_dim:
            head = nn.Linear(self.feature_dim, num_classes)
            head.load_state_dict(clf.state_dict())
        else:
            head = self.new_head(num_classes, generator)
        self.heads[INITIAL_HEAD] = head.to(self.device)

    def begin_task(self, index: int, name: str, num_classes: int, generator: torch.Generator | None = None) -> None:
        """Add task `index`: free weights (zero-valued) become its own; without an initial pruning the first task
        takes over the pretrained weights."""
        super().begin_task(index, name, num_classes, generator)
        oid = owner_id(index)
        with torch.no_grad():
            for n, m in self.masks.items():
                take = (m == FREE) | ((m == PRETRAINED) if index == 0 and not self.initial_pruned else False)
                m[take] = oid
                if index > 0 or self.initial_pruned:
                    self.layers[n].weight[m == oid] = 0.0  # freed weights restart at zero (they are zero already)
        if not any(bool((m == oid).any()) for m in self.masks.values()):
            log.warning("PackNet: task %r gets no free weight; only its head will train", name)
        self._invalidate()

    def prune(self, index: int, ratio: float) -> dict[str, int]:
        """Free `ratio` of task `index`'s own weights in every layer (after its training)."""
        check_ratio(ratio)
        self._expect("training", action="prune")
        if index != self.current:
            raise KshotError(f"PackNet: can only prune the current task {self.current}, not {index}")
        freed = self._prune_owner(owner_id(index), ratio)
        self.status = "pruned"
        return freed

    def _prune_owner(self, oid: int, ratio: float) -> dict[str, int]:
        freed = {}
        with torch.no_grad():
            for n, m in self.masks.items():
                chosen = magnitude_prune(self.layers[n].weight, m == oid, ratio)
                m[chosen] = FREE
                self.layers[n].weight[chosen] = 0.0
                freed[n] = int(chosen.sum())
        self._invalidate()
        return freed

    # ------------------------------------------------------------ phases

    def trainable(self, index: int) -> list[nn.Parameter]:
        layer_weights = [m.weight for m in self.layers.values()]
        if index != INITIAL:
            return layer_weights
        norms = norm_parameters(self.backbone)  # initial retraining: biases and BN too (official --train_biases/bn)
        return layer_weights + [p for p in self.backbone.parameters()
                                if id(p) in norms or all(p is not w for w in layer_weights)]

    def param_groups(self, index: int, weight_decay: float) -> list[dict[str, Any]]:
        """Layer weights get weight decay through `before_step` (own weights only), the rest through SGD."""
        if index == INITIAL:
            self._expect("idle", action="retrain the pretrained network")
            if self.task_names:
                raise KshotError("PackNet: the initial retraining must come before the first task")
        groups = super().param_groups(index, weight_decay)
        layer_ids = {id(m.weight) for m in self.layers.values()}
        out = []
        for g in groups:
            masked = [p for p in g["params"] if id(p) in layer_ids]
            plain = [p for p in g["params"] if id(p) not in layer_ids]
            out += [{"params": masked, "weight_decay": 0.0}] if masked else []
            out += [{"params": plain, "weight_decay": g["weight_decay"]}] if plain else []
        oid = owner_id(index)
        self._not_own = {n: m != oid for n, m in self.masks.items()}
        return out

    def train_mode(self, index: int) -> None:
        set_train_mode(self.backbone, train_norm=index == INITIAL)
        self.head_for(index).train()

    def before_step(self, index: int, weight_decay: float) -> None:
        """Zero the gradients of weights the task does not own; add weight decay on the owned ones only."""
        for n, mod in self.layers.items():
            g = mod.weight.grad
            if g is None:
                continue
            if weight_decay:
                g.add_(mod.weight.detach(), alpha=weight_decay)
            g.masked_fill_(self._not_own[n], 0.0)  # after the decay: nothing reaches weights of other owners

    # ------------------------------------------------------------ accounting

    def capacity(self) -> dict[str, dict[str, int]]:
        """Per layer: total weights, 'free', 'pretrained' and one count per task name (they sum to the total)."""
        out = {}
        for n, m in self.masks.items():
            counts = torch.bincount(m.flatten().long(), minlength=len(self.task_names) + 2).tolist()
            row = {"total": m.numel(), "free": counts[FREE], "pretrained": counts[PRETRAINED]}
            row.update({t: counts[owner_id(i)] for i, t in enumerate(self.task_names)})
            out[n] = row
        return out

    def parameter_count(self) -> dict[str, int]:
        out = super().parameter_count()
        out["mask_bytes"] = sum(m.numel() for m in self.masks.values())
        return out

    # ------------------------------------------------------------ state

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = super().state_tensors()
        out.update({f"mask.{n}": m for n, m in self.masks.items()})
        return out

    def state_meta(self) -> dict[str, Any]:
        return {**super().state_meta(), "initial_pruned": self.initial_pruned,
                "layers": [[n, list(s)] for n, s in layer_signature(self.backbone)]}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], where: str) -> None:
        masks = {k[len("mask."):]: v for k, v in tensors.items() if k.startswith("mask.")}
        self._check_masks(masks, where)
        super().load_state({k: v for k, v in tensors.items() if not k.startswith("mask.")}, meta, where)
        self.masks = {n: masks[n].to(self.device, torch.uint8).clone() for n in self.layers}
        self.initial_pruned = bool(meta.get("initial_pruned", False))
        self._zero_free(where)

    def _check_masks(self, masks: dict[str, torch.Tensor], where: str) -> None:
        for n, mod in self.layers.items():
            if n not in masks:
                raise CheckpointError(f"{where}: mask file does not fit {self.arch!r}: no mask for layer {n!r} "
                                      f"(saved from another architecture?)")
            if tuple(masks[n].shape) != tuple(mod.weight.shape):
                raise CheckpointError(f"{where}: mask of layer {n!r} has shape {tuple(masks[n].shape)}, the "
                                      f"{self.arch!r} layer has {tuple(mod.weight.shape)} (another architecture?)")
            if masks[n].dtype != torch.uint8:
                raise CheckpointError(f"{where}: mask of layer {n!r} is {masks[n].dtype}, expected uint8")
        extra = sorted(set(masks) - set(self.layers))
        if extra:
            raise CheckpointError(f"{where}: mask file has layers {extra[:3]} that {self.arch!r} does not have "
                                  f"(saved from another architecture?)")

    def save_masks(self, path: str | Path) -> Path:
        """Write the masks alone (safetensors, metadata: format, arch, task names)."""
        from safetensors.torch import save_file

        path = Path(path)
        meta = {"format": MASK_FORMAT, "arch": self.arch, "tasks": json.dumps(self.task_names)}
        save_file({n: m.contiguous().cpu() for n, m in self.masks.items()}, str(path), metadata=meta)
        return path

    def load_masks(self, path: str | Path) -> None:
        """Replace the masks by a mask file's (must fit this architecture layer by layer)."""
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                masks = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise CheckpointError(f"{path}: cannot read mask file: {e}") from None
        if meta.get("format") != MASK_FORMAT:
            raise CheckpointError(f"{path}: not a kshot PackNet mask file (format {meta.get('format')!r})")
        self._check_masks(masks, str(path))
        if meta.get("arch") != self.arch:
            log.warning("%s: masks saved from %r, loading into %r (same layer shapes)", path, meta.get("arch"),
                        self.arch)
        self.masks = {n: masks[n].to(self.device).clone() for n in self.layers}
        self._zero_free(str(path))

    def _zero_free(self, where: str) -> None:
        """Keep the invariant that free weights are exactly zero (views rely on it)."""
        with torch.no_grad():
            for n, m in self.masks.items():
                w = self.layers[n].weight
                stray = (m == FREE) & (w != 0)
                if bool(stray.any()):
                    log.warning("%s: %d free weights of layer %s were not zero; zeroed", where, int(stray.sum()), n)
                    w[stray] = 0.0
        self._invalidate()
