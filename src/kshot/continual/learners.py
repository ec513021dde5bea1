"""Continual learners sharing one interface: a backbone, one head per task, and what each phase may train.

`Learner` is the base and the guarded task life cycle (idle -> training -> idle); the baselines the PackNet paper
compares against are small subclasses:

- `finetune`: one shared backbone fine-tuned on every task with a new head (old heads kept): shows forgetting.
- `frozen`: the pretrained backbone as a fixed feature extractor; only the heads train.
- `individual`: a separate copy of the pretrained backbone per task (the upper bound; T times the parameters).

Baselines train every backbone parameter except normalisation layers (kept in eval mode, as in PackNet), start from
the unpruned pretrained network, and follow the same schedule as PackNet without its pruning. PackNet itself is in
`packnet.py`.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import nn

from kshot.errors import CheckpointError, DataError, KshotError
from kshot.registry import Registry

from .networks import BuiltNetwork, norm_parameters, prunable_layers, set_train_mode

LEARNERS: Registry[type["Learner"]] = Registry("continual learner")
INITIAL = -1
"""Task index of the optional initial retraining of the pretrained network."""
INITIAL_HEAD = "_initial"


class Learner:
    """Backbone + per-task heads. Subclasses choose the trainable parameters of each phase.

    Args:
        built: the network from `networks.build_network`.
        device: where the modules live.
    """

    method: ClassVar[str] = "base"

    def __init__(self, built: BuiltNetwork, device: torch.device | str = "cpu"):
        self.arch = built.arch
        self.device = torch.device(device)
        self.backbone = built.backbone.to(self.device)
        self.feature_dim = built.feature_dim
        self.pretrained_classifier = built.classifier
        self.heads = nn.ModuleDict().to(self.device)
        self.layers = prunable_layers(self.backbone)
        self.task_names: list[str] = []
        self.status = "idle"
        self.current: int | None = None
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------ life cycle (guarded)

    def _expect(self, *states: str, action: str) -> None:
        if self.status not in states:
            raise KshotError(f"{self.method}: cannot {action} while {self.status!r} (expected {' or '.join(states)})")

    def begin_task(self, index: int, name: str, num_classes: int, generator: torch.Generator | None = None) -> None:
        """Start task `index` (the next one): add its head (`num_classes` outputs)."""
        self._expect("idle", action=f"begin task {name!r}")
        if index != len(self.task_names):
            raise KshotError(f"{self.method}: tasks must be added in order; expected index {len(self.task_names)}, "
                             f"got {index}")
        self.heads[name] = self.new_head(num_classes, generator).to(self.device)
        self.task_names.append(name)
        self.status, self.current = "training", index

    def new_head(self, num_classes: int, generator: torch.Generator | None = None) -> nn.Linear:
        """A fresh linear head feature_dim -> num_classes (torch's default init range, drawn from `generator`)."""
        head = nn.Linear(self.feature_dim, num_classes)
        if generator is not None:
            bound = 1.0 / self.feature_dim ** 0.5
            with torch.no_grad():
                head.weight.uniform_(-bound, bound, generator=generator)
                head.bias.uniform_(-bound, bound, generator=generator)
        return head

    def end_task(self, index: int) -> None:
        """Finish task `index`: nothing of it trains again."""
        self._expect("training", "pruned", action="end a task")
        if index != self.current:
            raise KshotError(f"{self.method}: task {index} is not the current task {self.current}")
        self.status, self.current = "idle", None

    def check_head(self, index: int, num_classes: int, where: str) -> None:
        """Raise DataError when task `index`'s head does not have `num_classes` outputs."""
        head = self.heads[self.task_names[index]]
        if head.out_features != num_classes:
            raise DataError(f"{where}: task {self.task_names[index]!r} has {num_classes} classes but its head "
                            f"has {head.out_features} outputs")

    # ------------------------------------------------------------ phases

    def backbone_for(self, index: int) -> nn.Module:
        """The backbone task `index` runs through."""
        return self.backbone

    def head_for(self, index: int) -> nn.Module:
        if index == INITIAL:
            return self.heads[INITIAL_HEAD]
        return self.heads[self.task_names[index]]

    def trainable(self, index: int) -> list[nn.Parameter]:
        """Backbone parameters trained on task `index` (baselines: all except normalisation layers)."""
        norms = norm_parameters(self.backbone_for(index))
        return [p for p in self.backbone_for(index).parameters() if id(p) not in norms]

    def param_groups(self, index: int, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups for a phase of task `index`; sets `requires_grad` on exactly these parameters."""
        for p in self._all_parameters():
            p.requires_grad_(False)
        groups = [{"params": self.trainable(index), "weight_decay": weight_decay},
                  {"params": list(self.head_for(index).parameters()), "weight_decay": weight_decay}]
        groups = [g for g in groups if g["params"]]
        for g in groups:
            for p in g["params"]:
                p.requires_grad_(True)
        return groups

    def train_mode(self, index: int) -> None:
        """Modules in training mode with normalisation layers frozen (eval mode)."""
        set_train_mode(self.backbone_for(index), train_norm=False)
        self.head_for(index).train()

    def before_step(self, index: int, weight_decay: float) -> None:
        """Hook between backward and `optimizer.step()` (PackNet masks gradients here)."""

    def freeze(self) -> None:
        """Stop every gradient (after a phase)."""
        for p in self._all_parameters():
            p.requires_grad_(False)
            p.grad = None

    def _all_parameters(self) -> list[nn.Parameter]:
        return [*self.backbone.parameters(), *self.heads.parameters()]

    # ------------------------------------------------------------ inference

    def forward(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Logits [B, C_index] of task `index` for images x [B, 3, H, W] (mode left as set by the caller)."""
        return self.head_for(index)(self.backbone_for(index)(x))

    @torch.no_grad()
    def logits(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Evaluation-mode logits [B, C] of task `index`."""
        self.backbone_for(index).eval()
        self.head_for(index).eval()
        return self.forward(x.to(self.device), index)

    # ------------------------------------------------------------ state

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor of everything trained (backbone, heads); saved as safetensors."""
        out = {f"backbone.{k}": v for k, v in self.backbone.state_dict().items()}
        out.update({f"head.{k}": v for k, v in self.heads.state_dict().items()})
        return out

    def state_meta(self) -> dict[str, Any]:
        return {"method": self.method, "arch": self.arch, "tasks": list(self.task_names), "status": self.status,
                "current": self.current}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], where: str) -> None:
        """Restore from `state_tensors()`/`state_meta()` output; `where` names the file in errors."""
        if meta.get("method") != self.method:
            raise CheckpointError(f"{where}: holds a {meta.get('method')!r} run, not {self.method!r}")
        if meta.get("arch") != self.arch:
            raise CheckpointError(f"{where}: saved from architecture {meta.get('arch')!r}, not {self.arch!r}")
        _load_module(self.backbone, tensors, "backbone.", where)
        self.task_names = list(meta["tasks"])
        self.heads = nn.ModuleDict()
        for name in [INITIAL_HEAD, *self.task_names]:
            w = tensors.get(f"head.{name}.weight")
            if w is None:
                if name == INITIAL_HEAD:
                    continue
                raise CheckpointError(f"{where}: no head for task {name!r}")
            head = nn.Linear(w.shape[1], w.shape[0])
            head.load_state_dict({"weight": w, "bias": tensors[f"head.{name}.bias"]})
            self.heads[name] = head
        self.heads.to(self.device)
        self.status, self.current = meta["status"], meta["current"]
        self.freeze()

    def parameter_count(self) -> dict[str, int]:
        """Parameters stored: backbone(s), heads, and bytes of masks (0 without masks)."""
        return {"backbone": sum(p.numel() for p in self.backbone.parameters()),
                "heads": sum(p.numel() for n, p in self.heads.named_parameters() if not n.startswith(INITIAL_HEAD)),
                "mask_bytes": 0}


def _load_module(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, where: str) -> None:
    own = module.state_dict()
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{where}: weights do not fit the network: missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}, shape mismatches {wrong[:3]} (another architecture?)")
    module.load_state_dict(state)


@LEARNERS.register("finetune", "one backbone fine-tuned on every task, a new head each (forgets)")
class Finetune(Learner):
    method = "finetune"


@LEARNERS.register("frozen", "fixed pretrained feature extractor, one trained head per task")
class Frozen(Learner):
    method = "frozen"

    def trainable(self, index: int) -> list[nn.Parameter]:
        return []

    def train_mode(self, index: int) -> None:
        self.backbone.eval()
        self.head_for(index).train()


@LEARNERS.register("individual", "a separate fine-tuned copy of the pretrained backbone per task (upper bound)")
class Individual(Learner):
    method = "individual"

    def __init__(self, built: BuiltNetwork, device: torch.device | str = "cpu"):
        super().__init__(built, device)
        self.copies = nn.ModuleList()

    def begin_task(self, index: int, name: str, num_classes: int, generator: torch.Generator | None = None) -> None:
        super().begin_task(index, name, num_classes, generator)
        self.copies.append(copy.deepcopy(self.backbone))

    def backbone_for(self, index: int) -> nn.Module:
        return self.copies[index]

    def _all_parameters(self) -> list[nn.Parameter]:
        return [*super()._all_parameters(), *self.copies.parameters()]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = super().state_tensors()
        for i, c in enumerate(self.copies):
            out.update({f"copy{i}.{k}": v for k, v in c.state_dict().items()})
        return out

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], where: str) -> None:
        super().load_state(tensors, meta, where)
        self.copies = nn.ModuleList()
        for i in range(len(self.task_names)):
            c = copy.deepcopy(self.backbone)
            _load_module(c, tensors, f"copy{i}.", where)
            self.copies.append(c)
        self.freeze()

    def parameter_count(self) -> dict[str, int]:
        out = super().parameter_count()
        out["backbone"] = sum(p.numel() for p in self.copies.parameters()) or out["backbone"]
        return out
