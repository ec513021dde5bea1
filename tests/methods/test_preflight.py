"""`Method.preflight`: checks without training, run by fit/eval/bench before the first fit (issue 22)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kshot.errors import ConfigError, DataError
from kshot.eval.fewshot import FewShotInputs, FewShotProtocol, ResultStore, run_fewshot
from kshot.experiment import preflight
from kshot.features.featureset import FeatureSet
from kshot.methods import create
from tests.helpers import write_image_folder
from tests.methods.prompting.conftest import TOY_NAMES, make_toy_backbone

#: Spelled letter by letter by the toy tokenizer (not in its vocabulary): a prompt longer than its 32 tokens.
LONG = "supercalifragilisticexpialidocious"


def _inputs(bb, names):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(len(names)).repeat_interleave(6)
    x = F.normalize(torch.randn(len(labels), bb.embed_dim, generator=g), dim=-1)
    fs = FeatureSet(x, labels, [f"{i}.png" for i in range(len(labels))])
    tw = F.normalize(torch.randn(len(names), bb.embed_dim, generator=g), dim=-1)
    return FewShotInputs("t", bb.spec, fs, fs, list(names), tw, bb.logit_scale, encoder=bb)


def test_atprompt_defaults_pass_on_short_names_and_fail_on_long_ones():
    bb = make_toy_backbone()
    create("atprompt").preflight(TOY_NAMES, bb)
    create("coop").preflight(TOY_NAMES, bb)
    with pytest.raises(DataError, match=r"atprompt: class .*needs \d+ tokens but the text encoder's context is 32"):
        create("atprompt").preflight([*TOY_NAMES, LONG], bb)


def test_atprompt_search_checks_the_longest_candidate_combination():
    bb = make_toy_backbone()
    create("atprompt", candidates=("color", "shape")).preflight(TOY_NAMES, bb)
    m = create("atprompt", candidates=("color", "shape", LONG), search_max_size=1)
    with pytest.raises(ConfigError, match=f"atprompt: attributes \\['{LONG}'\\] .* need 42 of the text encoder's 32"):
        m.preflight(TOY_NAMES, bb)
    assert "attributes_" not in m.__dict__ and m.backbone_ is None  # nothing of the check is left on the method


def test_prompt_methods_need_a_backbone_and_deep_ones_images():
    bb = make_toy_backbone()
    with pytest.raises(ConfigError, match="coop runs the backbone's towers, and this run hands it none"):
        create("coop").preflight(TOY_NAMES, None)
    with pytest.raises(ConfigError, match="maple trains through the image encoder.*cached features only"):
        create("maple").preflight(TOY_NAMES, bb, images=False)
    with pytest.raises(ConfigError, match=r"maple: text prompt depth 99 is beyond the text tower's 2 layers"):
        create("maple", depth=99).preflight(TOY_NAMES, bb, images=True)
    create("maple", depth=1).preflight(TOY_NAMES, bb, images=True)
    create("tip_adapter").preflight(TOY_NAMES, None)  # cached-feature methods need nothing


def test_every_failure_in_one_line():
    bb = make_toy_backbone()
    with pytest.raises(ConfigError) as e:
        preflight(["tip_adapter", "atprompt", "clip_lora"], {}, [*TOY_NAMES, LONG], bb)
    msg = str(e.value)
    assert "\n" not in msg and "atprompt:" in msg and "clip_lora trains through the image encoder" in msg
    assert "tip_adapter" not in msg


def test_fewshot_protocol_refuses_before_the_first_fit(tmp_path, monkeypatch):
    bb = make_toy_backbone()
    fits = []
    from kshot.methods.tip_adapter import TipAdapter

    monkeypatch.setattr(TipAdapter, "fit", lambda self, task: fits.append(self.name) or self)
    store = ResultStore(tmp_path / "results.jsonl")
    with pytest.raises(DataError, match="prompt needs"):
        run_fewshot(_inputs(bb, [*TOY_NAMES, LONG]), FewShotProtocol(["tip_adapter", "atprompt"], (1,), (1,)), store)
    assert fits == [] and not (tmp_path / "results.jsonl").exists()
    with pytest.raises(ConfigError, match="clip_lora trains through the image encoder"):
        run_fewshot(_inputs(bb, TOY_NAMES), FewShotProtocol(["tip_adapter", "clip_lora"], (1,), (1,)), store)
    assert fits == []


def test_kshot_eval_names_the_atprompt_problem_before_training(tmp_path):
    """The CLI path of the issue: ATPrompt's defaults on the toy CLIP with a long class-folder name."""
    data = write_image_folder(tmp_path / "data", {"red": [(200, 0, 0)] * 6, LONG: [(0, 0, 200)] * 6})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "OMP_NUM_THREADS": "1",
           "KSHOT_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "kshot", "eval", str(data), "--holdout", "0.3", "--methods",
                        "tip_adapter,atprompt", "--shots", "1", "--seeds", "1", "-o", str(tmp_path / "out")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "prompt needs" in r.stderr and "context is 32" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out" / "results.jsonl").exists()  # tip_adapter did not train first
    assert not (tmp_path / "cache").exists()  # nor was anything extracted
