"""CLIP's image and text forward in Jittor (Radford et al., 2021), from an OpenAI/JCLIP-layout {name: array} dict.

Runs only inside the Jittor worker (needs `jittor` and numpy; never torch). The forward is written as functions over
a dict of Jittor Vars keyed by the OpenAI/JCLIP parameter names, so JCLIP's `.pkl` files and kshot's exports load
into it unchanged:

- ViT image tower: patch conv -> [class token; patches] + positions -> ln_pre -> pre-norm residual blocks
  (multi-head self-attention, MLP with the model's activation) -> ln_post of the class token -> `proj`;
- ModifiedResNet image tower: 3-conv stem + avgpool, Bottleneck stages (avgpool anti-aliased strides, avgpool +
  1x1 conv downsample), attention pooling of the mean token over [mean; pixels] + positions;
- text tower: token + position embeddings -> residual blocks with a causal mask -> ln_final -> the features at each
  sequence's highest token id (the end-of-text token of CLIP's tokenizers) -> `text_projection`.

BatchNorm runs in inference form (running statistics). Shapes: images [N, 3, H, W] float32, tokens [N, L] int64,
outputs [N, embed_dim] un-normalised, like `model.encode_image` / `encode_text` in open_clip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jittor as jt
import numpy as np

from kshot.jittor_backend.arch import ClipLayout, check_keys, expected_shapes, shapes_of


def layer_norm(x: jt.Var, w: jt.Var, b: jt.Var, eps: float) -> jt.Var:
    """LayerNorm over the last axis (biased variance, as torch)."""
    mean = x.mean(dim=-1, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(dim=-1, keepdims=True)
    return xc / jt.sqrt(var + eps) * w + b


def activation(x: jt.Var, kind: str) -> jt.Var:
    """QuickGELU x·σ(1.702x) (OpenAI CLIP), exact GELU (erf), or tanh-approximated GELU."""
    if kind == "quick_gelu":
        return x * jt.sigmoid(1.702 * x)
    if kind == "gelu":
        return 0.5 * x * (1.0 + jt.erf(x * (1.0 / math.sqrt(2.0))))
    return 0.5 * x * (1.0 + jt.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def softmax(x: jt.Var, dim: int = -1) -> jt.Var:
    e = (x - x.max(dim=dim, keepdims=True)).exp()
    return e / e.sum(dim=dim, keepdims=True)


def linear(x: jt.Var, w: jt.Var, b: jt.Var | None = None) -> jt.Var:
    """x [..., in] @ wᵀ (+ b), w [out, in] as torch stores it."""
    y = jt.matmul(x, w.transpose(1, 0))
    return y if b is None else y + b


def attention(q: jt.Var, k: jt.Var, v: jt.Var, heads: int, mask: jt.Var | None = None) -> jt.Var:
    """Scaled dot-product attention of q [N, Lq, W] over k, v [N, L, W] in `heads` heads -> [N, Lq, W]."""
    n, lq, width = q.shape
    lk = k.shape[1]
    d = width // heads

    def split(t: jt.Var, length: int) -> jt.Var:
        return t.reshape(n, length, heads, d).transpose(0, 2, 1, 3)  # [N, h, L, d]

    scores = jt.matmul(split(q, lq) * (1.0 / math.sqrt(d)), split(k, lk).transpose(0, 1, 3, 2))
    if mask is not None:
        scores = scores + mask
    out = jt.matmul(softmax(scores, -1), split(v, lk))  # [N, h, Lq, d]
    return out.transpose(0, 2, 1, 3).reshape(n, lq, width)


class JittorCLIP:
    """A CLIP in Jittor built from {OpenAI/JCLIP name: array}.

    Args:
        state: parameters (numpy arrays, any float dtype; cast to float32). Keys are checked against `layout`,
            naming any that do not fit.
        layout: sizes, head counts and activation (see `kshot.jittor_backend.arch.ClipLayout`).
    """

    def __init__(self, state: Mapping[str, np.ndarray], layout: ClipLayout):
        check_keys(shapes_of(state), layout, "Jittor CLIP weights")
        self.layout = layout
        self.p = {k: jt.array(np.ascontiguousarray(state[k], dtype=np.float32)) for k in expected_shapes(layout)}
        ctx = layout.context_length
        self._causal = jt.array(np.triu(np.full((ctx, ctx), -np.inf, dtype=np.float32), 1))

    # ------------------------------------------------------------------------------------------------ shared
    def _ln(self, x: jt.Var, prefix: str) -> jt.Var:
        return layer_norm(x, self.p[prefix + ".weight"], self.p[prefix + ".bias"], self.layout.ln_eps)

    def _block(self, x: jt.Var, prefix: str, heads: int, mask: jt.Var | None) -> jt.Var:
        p, width = self.p, x.shape[-1]
        h = self._ln(x, prefix + "ln_1")
        qkv = linear(h, p[prefix + "attn.in_proj_weight"], p[prefix + "attn.in_proj_bias"])
        q, k, v = qkv[:, :, :width], qkv[:, :, width:2 * width], qkv[:, :, 2 * width:]
        a = attention(q, k, v, heads, mask)
        x = x + linear(a, p[prefix + "attn.out_proj.weight"], p[prefix + "attn.out_proj.bias"])
        h = self._ln(x, prefix + "ln_2")
        h = activation(linear(h, p[prefix + "mlp.c_fc.weight"], p[prefix + "mlp.c_fc.bias"]), self.layout.activation)
        return x + linear(h, p[prefix + "mlp.c_proj.weight"], p[prefix + "mlp.c_proj.bias"])

    def _transformer(self, x: jt.Var, prefix: str, layers: int, heads: int, mask: jt.Var | None) -> jt.Var:
        for i in range(layers):
            x = self._block(x, f"{prefix}{i}.", heads, mask)
        return x

    # ------------------------------------------------------------------------------------------------ vision
    def _vit(self, images: jt.Var) -> jt.Var:
        lay, p = self.layout, self.p
        x = jt.nn.conv2d(images, p["visual.conv1.weight"], None, lay.patch_size, 0)  # [N, W, g, g]
        n, w = x.shape[0], x.shape[1]
        x = x.reshape(n, w, -1).transpose(0, 2, 1)  # [N, g*g, W]
        cls = p["visual.class_embedding"].reshape(1, 1, w).broadcast((n, 1, w))
        x = jt.concat([cls, x], dim=1) + p["visual.positional_embedding"]
        x = self._ln(x, "visual.ln_pre")
        x = self._transformer(x, "visual.transformer.resblocks.", lay.vision_layers, lay.vision_heads, None)
        return jt.matmul(self._ln(x[:, 0], "visual.ln_post"), p["visual.proj"])

    def _bn(self, x: jt.Var, prefix: str) -> jt.Var:
        p, c = self.p, x.shape[1]

        def col(name: str) -> jt.Var:
            return p[f"{prefix}.{name}"].reshape(1, c, 1, 1)

        scale = col("weight") / jt.sqrt(col("running_var") + self.layout.bn_eps)
        return (x - col("running_mean")) * scale + col("bias")

    def _conv_bn(self, x: jt.Var, prefix: str, conv: str, bn: str, padding: int, stride: int = 1) -> jt.Var:
        y = jt.nn.conv2d(x, self.p[f"{prefix}{conv}.weight"], None, stride, padding)
        return self._bn(y, prefix + bn)

    def _bottleneck(self, x: jt.Var, prefix: str, stride: int) -> jt.Var:
        out = jt.nn.relu(self._conv_bn(x, prefix, "conv1", "bn1", 0))
        out = jt.nn.relu(self._conv_bn(out, prefix, "conv2", "bn2", 1))
        if stride > 1:
            out = jt.nn.avg_pool2d(out, stride)
        out = self._conv_bn(out, prefix, "conv3", "bn3", 0)
        identity = x
        if prefix + "downsample.0.weight" in self.p:
            if stride > 1:
                identity = jt.nn.avg_pool2d(identity, stride)
            identity = self._conv_bn(identity, prefix, "downsample.0", "downsample.1", 0)
        return jt.nn.relu(out + identity)

    def _attnpool(self, x: jt.Var) -> jt.Var:
        p, heads = self.p, self.layout.vision_heads
        n, c = x.shape[0], x.shape[1]
        x = x.reshape(n, c, -1).transpose(0, 2, 1)  # [N, HW, C]
        x = jt.concat([x.mean(dim=1, keepdims=True), x], dim=1) + p["visual.attnpool.positional_embedding"]
        q = linear(x[:, :1], p["visual.attnpool.q_proj.weight"], p["visual.attnpool.q_proj.bias"])
        k = linear(x, p["visual.attnpool.k_proj.weight"], p["visual.attnpool.k_proj.bias"])
        v = linear(x, p["visual.attnpool.v_proj.weight"], p["visual.attnpool.v_proj.bias"])
        a = attention(q, k, v, heads)[:, 0]  # only the mean token is read out
        return linear(a, p["visual.attnpool.c_proj.weight"], p["visual.attnpool.c_proj.bias"])

    def _resnet(self, images: jt.Var) -> jt.Var:
        x = jt.nn.relu(self._conv_bn(images, "visual.", "conv1", "bn1", 1, stride=2))
        x = jt.nn.relu(self._conv_bn(x, "visual.", "conv2", "bn2", 1))
        x = jt.nn.relu(self._conv_bn(x, "visual.", "conv3", "bn3", 1))
        x = jt.nn.avg_pool2d(x, 2)
        for stage, blocks in enumerate(self.layout.vision_layers):
            for j in range(blocks):
                x = self._bottleneck(x, f"visual.layer{stage + 1}.{j}.", 2 if stage > 0 and j == 0 else 1)
        return self._attnpool(x)

    # ------------------------------------------------------------------------------------------------ public
    def encode_image(self, images: np.ndarray) -> np.ndarray:
        """images float32 [N, 3, S, S] (preprocessed) -> un-normalised features float32 [N, embed_dim]."""
        s = self.layout.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (s, s):
            raise ValueError(f"images must be [N, 3, {s}, {s}], got {list(images.shape)}")
        with jt.no_grad():
            x = jt.array(np.ascontiguousarray(images, dtype=np.float32))
            out = self._vit(x) if self.layout.vision == "vit" else self._resnet(x)
            return out.numpy()

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """tokens int64 [N, L] (L <= context length) -> un-normalised features float32 [N, embed_dim]."""
        lay, p = self.layout, self.p
        if tokens.ndim != 2 or not 0 < tokens.shape[1] <= lay.context_length:
            raise ValueError(f"tokens must be [N, L] with 0 < L <= {lay.context_length}, got {list(tokens.shape)}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= lay.vocab_size):
            raise ValueError(f"token ids must be in [0, {lay.vocab_size}), got {tokens.min()}..{tokens.max()}")
        n, length = tokens.shape
        with jt.no_grad():
            tok = jt.array(np.ascontiguousarray(tokens, dtype=np.int32))
            x = p["token_embedding.weight"][tok.reshape(-1)].reshape(n, length, lay.text_width)
            x = x + p["positional_embedding"][:length]
            x = self._transformer(x, "transformer.resblocks.", lay.text_layers, lay.text_heads,
                                  self._causal[:length, :length])
            x = self._ln(x, "ln_final")
            eot = jt.array(tokens.argmax(axis=1).astype(np.int32))  # highest id = end-of-text (first on ties, as torch)
            pooled = x[jt.arange(n), eot]
            return jt.matmul(pooled, p["text_projection"]).numpy()
