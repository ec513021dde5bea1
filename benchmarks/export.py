"""Images/s of an exported ONNX graph under onnxruntime (CPU) vs kshot's own torch path, on the same images.

    python benchmarks/export.py                      # toy:clip + a fitted LP++ head, 2048 images, batch 256
    python benchmarks/export.py --method tip_adapter --threads 2 --images 4096

The head is fitted on synthetic shots (features of random images; speed does not depend on accuracy). kshot's torch
path is the graph the export traces, run eagerly (normalise -> encode_image -> L2 normalise -> Method.logits: what
`kshot predict` computes per batch on the CPU after decoding). Both sides get the same uint8 crops, the same batch
size and the same thread count; the first batch of each is a warm-up.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from kshot.backbones import load_backbone
from kshot.deploy.export import export_deploy
from kshot.deploy.graph import ImageClassifier, build_graph, example_images
from kshot.deploy.onnx_predict import OnnxClassifier
from kshot.features.featureset import FeatureSet
from kshot.methods import Task, create


def rate(fn, images: torch.Tensor, batch: int) -> float:
    fn(images[:batch])  # warm-up
    t = time.perf_counter()
    for i in range(0, len(images), batch):
        fn(images[i:i + batch])
    return len(images) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="toy:clip")
    ap.add_argument("--method", default="lpp")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bb = load_backbone(args.backbone, device="cpu")
    size = bb.preprocess_cfg.image_size
    ident = ImageClassifier(bb, _Identity()).eval()
    with torch.no_grad():
        feats = ident(example_images(64 * 4, size, seed=5))
    labels = torch.arange(64).repeat_interleave(4)
    text = torch.nn.functional.normalize(feats.view(64, 4, -1).mean(1) + 0.1 * torch.randn(64, feats.shape[1]), dim=-1)
    task = Task(train=FeatureSet(feats, labels, [""] * len(labels)), classnames=[f"c{i}" for i in range(64)],
                text_weights=text, logit_scale=bb.logit_scale)
    method = create(args.method).fit(task)
    images = example_images(args.images, size, seed=7)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        method.save(run)
        (run / "task.json").write_text(json.dumps({"classnames": task.classnames}))
        export_deploy(run, Path(tmp) / "m.onnx", "onnx", bb, method)
        clf = OnnxClassifier.load(Path(tmp) / "m.onnx", threads=args.threads)
        graph = build_graph(bb, method)
        with torch.no_grad():
            torch_rate = rate(graph, images, args.batch)
        ort_rate = rate(clf.logits, images, args.batch)
    print(f"{args.backbone} + {args.method}, {args.images} images {size}px, batch {args.batch}, "
          f"{args.threads} thread(s)")
    print(f"kshot torch path : {torch_rate:9.0f} img/s")
    print(f"onnxruntime CPU  : {ort_rate:9.0f} img/s   ratio {ort_rate / torch_rate:.2f}x")


class _Identity(torch.nn.Module):
    """A head returning the L2-normalised features themselves (to draw synthetic shots through the encoder)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


if __name__ == "__main__":
    main()
