"""The training engine: deterministic step plans and schedule, and DDP under torchrun (2 gloo ranks) giving the
same loss curve and adapters as one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kshot.tuning.engine import EngineConfig, cosine_lr, step_samples

ROOT = Path(__file__).resolve().parents[2]


def test_step_plan_is_a_seeded_permutation_per_epoch() -> None:
    epoch0 = [i for s in range(3) for i, _ in step_samples(12, 4, seed=5, step=s)]
    assert sorted(epoch0) == list(range(12))
    assert step_samples(12, 4, 5, 3)[0][1] == 1  # step 3 starts epoch 1
    assert step_samples(12, 4, 5, 1) == step_samples(12, 4, 5, 1)
    assert step_samples(12, 4, 5, 0) != step_samples(12, 4, 6, 0)
    assert [i for i, _ in step_samples(3, 32, 0, 0)] and len(step_samples(3, 32, 0, 0)) == 3  # fewer shots than batch


def test_cosine_schedule_matches_torch_cosine_annealing() -> None:
    cfg = EngineConfig(iters=50, lr=2e-4, eta_min=1e-6)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.iters, eta_min=cfg.eta_min)
    for step in range(cfg.iters):
        assert abs(opt.param_groups[0]["lr"] - cosine_lr(cfg, step)) < 1e-10
        opt.step()
        sched.step()


_SCRIPT = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.methods.test_clip_lora import _world, _task
from kshot.backbones import load_backbone
from kshot.features.distributed import process_group, shard_from_env
from kshot.methods import create
train, _ = _world(Path({data!r}) / os.environ.get("RANK", "solo"))
bb = load_backbone("toy:clip")
with process_group(shard_from_env(), "cpu"):
    m = create("clip_lora", iters=6, batch_size=8, lr=1e-3, dropout=0.0, progress=False,
               checkpoint_every=3, checkpoint_dir={ckpt!r}).fit(_task(bb, train))
if os.environ.get("RANK", "0") == "0":
    Path({out!r}).write_text(json.dumps({{"losses": m.history_,
                                         "adapters": {{k: v.tolist() for k, v in m.adapters_.items()}}}}))
"""


def _torchrun() -> str | None:
    exe = Path(sys.executable).with_name("torchrun")
    return str(exe) if exe.is_file() else shutil.which("torchrun")


@pytest.mark.skipif(_torchrun() is None or not torch.distributed.is_gloo_available(),
                    reason="needs torchrun and the gloo backend")
def test_dassl_schedule_is_per_epoch_warmup_then_cosine() -> None:
    import math

    from kshot.methods.prompting.train import Schedule, dassl_lr

    # 10 shots, batch 4 -> 2 steps per epoch; 5 epochs = 10 iterations
    cfg = EngineConfig(iters=10, batch_size=4, lr=0.0035, schedule="dassl", warmup_epochs=1, warmup_lr=1e-5)
    lrs = [cosine_lr(cfg, t, 10) for t in range(10)]
    ref = Schedule(epochs=5, lr=0.0035, warmup_epochs=1, warmup_lr=1e-5)
    assert lrs == [dassl_lr(ref, t // 2) for t in range(10)]  # the text-side learners' schedule, per step
    assert lrs[0] == 1e-5 and lrs[2] == 0.0035
    assert lrs[9] == pytest.approx(0.5 * 0.0035 * (1 + math.cos(math.pi * 3 / 5)))


def test_ddp_two_ranks_equals_one_process(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    runs = {}
    for name, cmd in (("one", [sys.executable, "-c"]),
                      ("ddp", [_torchrun(), "--standalone", "--nproc-per-node", "2", "--no-python", sys.executable,
                               "-c"])):
        out = tmp_path / f"{name}.json"
        script = _SCRIPT.format(root=str(ROOT), data=str(tmp_path / f"data-{name}"),
                                ckpt=str(tmp_path / f"ck-{name}"), out=str(out))
        subprocess.run([*cmd, script], env=env, check=True, timeout=300)
        runs[name] = json.loads(out.read_text())
    one, ddp = runs["one"], runs["ddp"]
    assert len(one["losses"]) == 6
    assert max(abs(a - b) for a, b in zip(one["losses"], ddp["losses"])) <= 1e-4
    for k, v in one["adapters"].items():
        assert torch.allclose(torch.tensor(v), torch.tensor(ddp["adapters"][k]), atol=1e-5), k
    assert (tmp_path / "ck-ddp" / "checkpoint.json").is_file()
