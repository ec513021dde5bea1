"""LoRA on the q, k, v projections of `nn.MultiheadAttention` layers, and merging the adapters into plain weights.

CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024; `MaxZanella/CLIP-LoRA @ 358f0d73 : loralib/layers.py, loralib/utils.py`)
puts one rank-r adapter on each of q, k and v of every attention layer of both towers:

    q = x W_q^T + b_q + s · (drop(x) A_q^T) B_q^T,   s = alpha / sqrt(r)   (their scaling, not LoRA's alpha / r)

with A [r, E] Kaiming-uniform (a=√5, like `nn.Linear`), B [E, r] zero, and dropout on the adapter's input only.

Why our own layer and not `peft`: peft wraps `nn.MultiheadAttention` by putting one adapter on the fused
`in_proj_weight` [3E, E] (a single rank-r update shared by q, k and v) and also on `out_proj`; CLIP-LoRA needs an
independent adapter per projection. The official code instead re-builds the attention as three `nn.Linear`s,
which changes the parameter names of the model. `LoraAttention` keeps the original module (and so its names) as
`base` and only adds the A/B parameters; merging adds s · B A to each third of `in_proj_weight`, giving a plain
checkpoint that loads in any open_clip model of the same architecture.

Forward paths:
* eval mode, or dropout 0: the update is added to the weights and the *original* module runs on them
  (`torch.func.functional_call`); at inference a zero-B adapter calls the original module itself, so it gives
  exactly the base model's outputs (torch's fused inference kernel rounds differently, ~4e-7);
* training with dropout: base projections plus the adapter branch on dropped-out inputs, then scaled-dot-product
  attention. `fused=True` computes q, k, v with one [3E, E] matmul and the three adapters' A with one [3r, E] matmul;
  `fused=False` uses three separate projections as the official code does (compared in `benchmarks/lora.py`).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from kshot.errors import ConfigError

PARTS = ("q", "k", "v")


class LoraAttention(nn.Module):
    """`nn.MultiheadAttention` (self-attention) with rank-r LoRA adapters on q, k and v.

    Args:
        base: the attention module, kept under `base.` unchanged.
        rank: r (CLIP-LoRA 2).
        alpha: LoRA alpha (CLIP-LoRA 1); the update is scaled by alpha / sqrt(r).
        dropout: dropout probability on the adapters' input (CLIP-LoRA 0.25).
        generator: CPU generator for the Kaiming-uniform init of A (None: torch's global RNG).
        fused: one fused q/k/v projection in the dropout path (else three, as the official code).
    """

    def __init__(self, base: nn.MultiheadAttention, rank: int = 2, alpha: float = 1.0, dropout: float = 0.25,
                 generator: torch.Generator | None = None, fused: bool = True):
        super().__init__()
        if not base._qkv_same_embed_dim or base.in_proj_weight is None:
            raise ConfigError("LoRA needs attention with one fused in_proj (q, k, v of the same width)")
        if rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base  # left as it is: freezing is the trainer's job (and requires_grad changes torch's kernels)
        e = base.embed_dim
        w = base.in_proj_weight
        self.rank, self.alpha, self.scaling, self.fused = int(rank), float(alpha), float(alpha) / math.sqrt(rank), fused
        self.drop = nn.Dropout(dropout)
        bound = 1.0 / math.sqrt(e)  # kaiming_uniform_(a=sqrt(5)) on [r, E] = U(-1/sqrt(E), 1/sqrt(E))
        for part in PARTS:
            a = (torch.rand(rank, e, generator=generator) * 2 - 1) * bound
            self.register_parameter(f"{part}_A", nn.Parameter(a.to(w.device, w.dtype)))
            self.register_parameter(f"{part}_B", nn.Parameter(torch.zeros(e, rank, device=w.device, dtype=w.dtype)))

    def delta(self) -> torch.Tensor:
        """s · [B_q A_q; B_k A_k; B_v A_v], shape [3E, E] (the update of `in_proj_weight`)."""
        return self.scaling * torch.cat([getattr(self, f"{p}_B") @ getattr(self, f"{p}_A") for p in PARTS])

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, None]:
        if not (self.training and self.drop.p > 0):
            if not torch.is_grad_enabled() and not any(getattr(self, f"{p}_B").any() for p in PARTS):
                return self.base(query, key, value, key_padding_mask=key_padding_mask, need_weights=False,
                                 attn_mask=attn_mask, **kwargs)[0], None  # bit-identical to the untouched model
            w = self.base.in_proj_weight + self.delta().to(self.base.in_proj_weight.dtype)
            out = torch.func.functional_call(self.base, {"in_proj_weight": w}, (query, key, value),
                                             {"key_padding_mask": key_padding_mask, "need_weights": False,
                                              "attn_mask": attn_mask, **kwargs})
            return out[0], None
        if key_padding_mask is not None or not (query is key is value):
            raise ConfigError("LoRA attention with dropout supports self-attention without key_padding_mask only")
        return self._dropout_forward(query, attn_mask), None

    def _dropout_forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        base, e, r = self.base, self.base.embed_dim, self.rank
        if not base.batch_first:
            x = x.transpose(0, 1)
        n, length, _ = x.shape
        xd = self.drop(x)
        w, b = base.in_proj_weight, base.in_proj_bias
        if self.fused:
            qkv = F.linear(x, w, b)
            h = xd @ torch.cat([self.q_A, self.k_A, self.v_A]).T  # [N, L, 3r]
            up = [h[..., i * r:(i + 1) * r] @ getattr(self, f"{p}_B").T for i, p in enumerate(PARTS)]
            q, k, v = (qkv + self.scaling * torch.cat(up, dim=-1)).chunk(3, dim=-1)
        else:
            bs = (None, None, None) if b is None else b.chunk(3)
            q, k, v = (F.linear(x, wp, bp) + self.scaling * (xd @ getattr(self, f"{p}_A").T) @ getattr(self, f"{p}_B").T
                       for wp, bp, p in zip(w.chunk(3), bs, PARTS))
        heads = base.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, length, heads, e // heads).transpose(1, 2)

        mask = attn_mask
        if mask is not None and mask.dtype == torch.bool:  # nn.MultiheadAttention: True = not allowed
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(mask, float("-inf"))
        if mask is not None:
            mask = mask.to(q.dtype)
        dp = base.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask, dropout_p=dp)
        out = F.linear(out.transpose(1, 2).reshape(n, length, e), base.out_proj.weight, base.out_proj.bias)
        return out if base.batch_first else out.transpose(0, 1)


def attention_paths(model: nn.Module, towers: tuple[str, ...] = ("visual", "text")) -> list[str]:
    """Module paths of the self-attention layers of the requested CLIP towers (open_clip layout).

    'visual' = `model.visual.transformer`, 'text' = `model.transformer` (open_clip's `CLIP`; `CustomTextCLIP`'s
    `model.text.transformer`). Raises ConfigError when a tower has no `nn.MultiheadAttention` (e.g. a timm CNN).
    """
    roots = {"visual": ["visual.transformer"], "text": ["transformer", "text.transformer"]}
    found: list[str] = []
    for tower in towers:
        paths = []
        for root in roots[tower]:
            try:
                sub = model.get_submodule(root)
            except AttributeError:
                continue
            paths += [f"{root}.{n}" for n, m in sub.named_modules() if isinstance(m, (nn.MultiheadAttention,
                                                                                     LoraAttention))]
        paths = [p for p in paths if not p.endswith(".base")]
        if not paths:
            raise ConfigError(f"LoRA needs attention layers in the {tower} tower, and this backbone has none "
                              "(a CLIP ViT / open_clip model is required; CNNs such as timm ResNets cannot take it)")
        found += paths
    return found


def inject_lora(model: nn.Module, paths: list[str], *, rank: int, alpha: float, dropout: float,
                generator: torch.Generator | None = None, fused: bool = True) -> dict[str, LoraAttention]:
    """Replace each `nn.MultiheadAttention` at `paths` by a `LoraAttention` around it (in place); returns them."""
    out = {}
    for path in paths:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        base = getattr(parent, name)
        layer = LoraAttention(base, rank, alpha, dropout, generator, fused).train(base.training)
        setattr(parent, name, layer)
        out[path] = layer
    return out


def remove_lora(model: nn.Module, layers: dict[str, LoraAttention]) -> None:
    """Put the original attention modules back (undoes `inject_lora`)."""
    for path, layer in layers.items():
        parent_path, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent_path), name, layer.base)


def adapter_state(layers: dict[str, LoraAttention]) -> dict[str, torch.Tensor]:
    """{'<path>.q_A': [r, E], '<path>.q_B': [E, r], ...} (detached, CPU, float32)."""
    return {f"{path}.{n}": p.detach().float().cpu() for path, layer in layers.items() for n, p in _adapter_params(layer)}


def load_adapter_state(layers: dict[str, LoraAttention], state: dict[str, torch.Tensor]) -> None:
    """Copy tensors saved by `adapter_state` into the layers; a missing or mis-shaped tensor is a ConfigError."""
    with torch.no_grad():
        for path, layer in layers.items():
            for n, p in _adapter_params(layer):
                t = state.get(f"{path}.{n}")
                if t is None or t.shape != p.shape:
                    raise ConfigError(f"LoRA adapter {path}.{n}: expected shape {tuple(p.shape)}, got "
                                      f"{None if t is None else tuple(t.shape)}")
                p.copy_(t)


def lora_parameters(layers: dict[str, LoraAttention]) -> list[nn.Parameter]:
    """The trainable A/B parameters, in a fixed order (path, then q_A, q_B, k_A, ...)."""
    return [p for layer in layers.values() for _, p in _adapter_params(layer)]


def _adapter_params(layer: LoraAttention) -> Iterator[tuple[str, nn.Parameter]]:
    for part in PARTS:
        yield f"{part}_A", getattr(layer, f"{part}_A")
        yield f"{part}_B", getattr(layer, f"{part}_B")


def merged_state_dict(base_state: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor],
                      scaling: float) -> dict[str, torch.Tensor]:
    """A plain state dict: `base_state` with s · B A added to each adapted layer's `in_proj_weight`.

    Args:
        base_state: the untouched model's state dict (open_clip names).
        adapters: tensors of `adapter_state`.
        scaling: alpha / sqrt(r).
    """
    out = dict(base_state)
    paths = sorted({k.rsplit(".", 1)[0] for k in adapters})
    for path in paths:
        key = f"{path}.in_proj_weight"
        if key not in out:
            raise ConfigError(f"adapter layer {path} has no {key} in the base checkpoint (another architecture?)")
        w = out[key]
        delta = scaling * torch.cat([adapters[f"{path}.{p}_B"] @ adapters[f"{path}.{p}_A"] for p in PARTS])
        out[key] = (w.float() + delta.to(w.device)).to(w.dtype)
    return out
