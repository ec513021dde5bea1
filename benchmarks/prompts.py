"""CoOp training time per epoch: cached image features (kshot) vs re-encoding the images every step (official CoOp).

Same model, prompt learner, data, batch size and optimiser in both arms; the image encoder is frozen in both (the
official trainer still runs its forward pass on every batch, with random crop + flip). Images are random tensors at
the model's input size (timings do not depend on pixel values or weights), augmented on the device with a random
flip in the re-encoding arm. The cached arm pays extraction once (reported separately).

    python benchmarks/prompts.py                                               # toy CLIP (or a random toy) on CPU
    python benchmarks/prompts.py --backbone open_clip:ViT-B-16@random --classes 50 --shots 16 --device cuda

Prints seconds per epoch for both arms and their ratio (medians over the timed epochs, after one warm-up epoch).

    python benchmarks/prompts.py --deep maple,promptsrc --backbone open_clip:ViT-B-16@random --classes 50
    python benchmarks/prompts.py --deep maple,promptsrc,kgcoop ... --grad-checkpointing   # (kgcoop: text side only)

`--deep` instead times training steps of the image-side prompt methods (MaPLe, PromptSRC and their ATPrompt variants)
at their official batch size (4) and default depths: forward through both prompted towers, the method's loss,
backward, SGD step (iterations/s, median over the timed steps after one warm-up), and peak memory (CUDA: max
allocated; CPU: the process's peak RSS, which includes the model itself). A cached-feature prompt method (`kgcoop`,
`coop`, ...) in `--deep` times its text-side step instead (`run_text_side`; image encoder not in the loop). Peak RSS
is per process: time one method per run to compare memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
import torch.nn.functional as F


def load(spec: str, device: str):
    from kshot.backbones import load_backbone
    from kshot.errors import KshotError

    try:
        return load_backbone(spec, device=device)
    except KshotError:
        if spec != "toy:clip":
            raise
        from kshot.backbones.base import Backbone, hash_state_dict, make_fingerprint
        from kshot.toyworld.captions import caption_words
        from kshot.toyworld.model import ToyClipCfg, build_toy_clip, toy_preprocess_cfg
        from kshot.toyworld.tokenizer import ToyTokenizer, build_vocab

        print("toy:clip checkpoint not found; timing a randomly initialised toy CLIP of the same shape")
        tok = ToyTokenizer(build_vocab(caption_words()), 32)
        cfg = ToyClipCfg(vocab_size=tok.vocab_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_toy_clip(cfg).eval().to(device)
        pre = toy_preprocess_cfg(32)
        return Backbone("toy:random", "toy-clip", model, lambda x: x, pre, tok, cfg.embed_dim,
                        make_fingerprint("toy", hash_state_dict(model.state_dict()), pre), 100.0)


def build_learner(bb, classnames: list[str], n_ctx: int, gen: torch.Generator):
    from kshot.methods.prompting import GroupSpec, PromptLearner, TextTower, build_layout, content_ids, specials
    from kshot.methods.prompting.layout import coop_pieces
    from kshot.methods.prompting.learner import normal_vectors

    tower, tok = TextTower(bb.model), bb.tokenizer
    pieces = coop_pieces(n_ctx, "end", tuple(content_ids(tok, ".")))
    layout = build_layout([pieces], classnames, tok, specials(tok), {"ctx": n_ctx},
                          context_length=tower.context_length, trim=tower.can_trim)
    init = {"ctx": normal_vectors((n_ctx, tower.width), 0.02, gen)}
    return PromptLearner(tower, layout, [GroupSpec("ctx", n_ctx)], init)


def _sgd_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _peak_memory(device: torch.device) -> str:
    """Peak memory so far: CUDA max allocated on a GPU, else the process's peak RSS."""
    import resource

    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (CUDA max allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process peak RSS)"


def run_epochs(bb, learner, get_features, labels, epochs: int, batch_size: int, device: torch.device,
               gen: torch.Generator) -> list[float]:
    """Seconds per epoch of CoOp steps where `get_features(idx)` supplies the image features of a batch."""
    from kshot.methods.prompting import frozen
    from kshot.methods.prompting.method import PromptMethod
    from kshot.methods.prompting.train import amp_context

    opt = torch.optim.SGD(learner.parameters(), lr=0.002, momentum=0.9, weight_decay=5e-4)
    times = []
    with frozen(bb.model):
        for _ in range(epochs):
            t0 = time.perf_counter()
            for idx in torch.randperm(len(labels), generator=gen).split(batch_size):
                idx = idx.to(device)
                with amp_context(device, True):
                    x = get_features(idx)
                    text = F.normalize(learner()[0].float(), dim=-1)
                    loss = F.cross_entropy(bb.logit_scale * x.float() @ text.T, labels[idx])
                _sgd_step(opt, loss)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return times


def run_deep(bb, names: list[str], methods: list[str], steps: int, device: torch.device, grad_ckpt: bool,
             depth: int = 0) -> None:
    """Iterations/s and peak memory of deep-prompt training steps (see the module docstring)."""
    from kshot.methods import METHODS, Task, create
    from kshot.methods.prompting import frozen
    from kshot.methods.prompting.method import PromptMethod
    from kshot.methods.prompting.train import amp_context

    size = bb.preprocess_cfg.image_size
    gen = torch.Generator().manual_seed(0)
    for name in methods:
        if issubclass(METHODS.get(name), PromptMethod):
            run_text_side(bb, names, name, steps, device, gen)
            continue
        fields = {f.name for f in dataclasses.fields(METHODS.get(name).config_cls)}
        m = create(name, **({k: depth for k in ("depth", "depth_vision") if k in fields} if depth else {}))
        m.backbone_ = bb
        tower, image = m._check_model(bb)
        learner = m._learner(tower, names, m._initial_vectors(tower, gen))
        params = m._build(tower, image, gen).to(device)
        m._prepare(Task(train=None, classnames=names, backbone=bb, logit_scale=bb.logit_scale))
        batch = int(m.config.batch_size)
        opt = torch.optim.SGD(list(learner.parameters()) + list(params.parameters()), lr=1e-3, momentum=0.9)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        bb.model.set_grad_checkpointing(grad_ckpt)
        times = []
        with frozen(bb.model):
            for _ in range(steps + 1):
                x = torch.randn(batch, 3, size, size, generator=gen).to(device)
                y = torch.randint(0, len(names), (batch,), generator=gen).to(device)
                t0 = time.perf_counter()
                with amp_context(device, True):
                    loss = m.batch_loss(learner, params, image, x, y, bb.logit_scale).mean()
                _sgd_step(opt, loss)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        bb.model.set_grad_checkpointing(False)
        it_s = 1.0 / statistics.median(times[1:])
        print(f"{name:>20}: batch {batch}, depth {m.config.depth}: {it_s:.3f} it/s, peak {_peak_memory(device)}")


def run_text_side(bb, names: list[str], name: str, steps: int, device: torch.device, gen: torch.Generator) -> None:
    """Iterations/s and peak memory of a cached-feature prompt method's training step (KgCoOp, CoOp, ...): the
    prompted text tower over all classes, the method's loss on a batch of (random, unit) image features at its
    official batch size, backward, SGD step. The image encoder is not in the loop (features are cached)."""
    from kshot.methods import Task, create
    from kshot.methods.prompting import frozen

    m = create(name)
    m.attach_backbone(bb, strict=False)
    m._prepare(Task(train=None, classnames=names, backbone=bb, logit_scale=bb.logit_scale), gen)
    design = m._design()
    learner = m._build_learner(names, m._initial_vectors(design, len(names), gen))
    batch = int(m.config.batch_size)
    opt = torch.optim.SGD(learner.parameters(), lr=1e-3, momentum=0.9)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with frozen(bb.model):
        for _ in range(steps + 1):
            x = F.normalize(torch.randn(batch, bb.embed_dim, generator=gen), dim=-1).to(device)
            y = torch.randint(0, len(names), (batch,), generator=gen).to(device)
            t0 = time.perf_counter()
            loss = m._loss(learner, None, x, y, float(bb.logit_scale))
            _sgd_step(opt, loss)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    it_s = 1.0 / statistics.median(times[1:])
    print(f"{name:>20}: batch {batch}, text side only (cached image features): {it_s:.3f} it/s, "
          f"peak {_peak_memory(device)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="toy:clip")
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--n-ctx", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=4, help="timed epochs per arm (plus one warm-up)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--deep", default="", help="comma-separated deep prompt methods to time instead (maple, ...)")
    ap.add_argument("--steps", type=int, default=3, help="--deep: timed steps per method (plus one warm-up)")
    ap.add_argument("--grad-checkpointing", action="store_true", help="--deep: recompute block activations")
    ap.add_argument("--depth", type=int, default=0, help="--deep: prompt depth (0 = official; toy CLIP: 3)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bb = load(args.backbone, args.device)
    if args.deep:
        dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({args.threads} thread(s))"
        print(f"backbone {bb.spec}  device {dev}  {args.classes} classes")
        run_deep(bb, [f"class {i}" for i in range(args.classes)], args.deep.split(","), args.steps, device,
                 args.grad_checkpointing, args.depth)
        return
    size = bb.preprocess_cfg.image_size
    gen = torch.Generator().manual_seed(0)
    n = args.classes * args.shots
    images = torch.randn(n, 3, size, size, generator=gen).to(device)
    labels = torch.arange(args.classes).repeat_interleave(args.shots).to(device)
    names = [f"class {i}" for i in range(args.classes)]

    def encode(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(bb.encode_image(x).float(), dim=-1)

    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        cached = torch.cat([encode(b) for b in images.split(256)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    extract_s = time.perf_counter() - t0

    def reencode(idx: torch.Tensor) -> torch.Tensor:
        x = images[idx]
        flip = torch.rand(len(idx), generator=gen).to(device) < 0.5
        return encode(torch.where(flip[:, None, None, None], x.flip(-1), x))

    arms = {}
    for name, get in (("cached", lambda idx: cached[idx]), ("re-encode", reencode)):
        learner = build_learner(bb, names, args.n_ctx, torch.Generator().manual_seed(0))
        times = run_epochs(bb, learner, get, labels, args.epochs + 1, args.batch_size, device, gen)
        arms[name] = statistics.median(times[1:])
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({args.threads} thread(s))"
    print(f"backbone {bb.spec}  device {dev}  {args.classes} classes x {args.shots} shots, M={args.n_ctx}, "
          f"batch {args.batch_size}")
    print(f"one-time feature extraction: {extract_s:.3f} s")
    for name, s in arms.items():
        print(f"{name:>10}: {s:.3f} s/epoch")
    print(f"ratio re-encode / cached: {arms['re-encode'] / arms['cached']:.2f}x")


if __name__ == "__main__":
    main()
