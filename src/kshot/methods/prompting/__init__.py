"""Prompt learning on open_clip's text tower: the learner behind `coop`, `cocoop` and `atprompt`, ATPrompt's
attribute search, prompt interpretation and the CoOp benchmark dataset definitions.

The methods themselves are registered in `kshot.methods` (`create("coop")`, ...); the base-to-new protocol is
`kshot.eval.base2new`.
"""

from kshot.data.benchmarks import BENCHMARKS, Benchmark, find_benchmark, get_benchmark, load_benchmark
from kshot.methods.prompting.interpret import explain, load_prompt_method, nearest_words
from kshot.methods.prompting.layout import CLASS, Layout, Learned, build_layout
from kshot.methods.prompting.learner import GroupSpec, PromptLearner, frozen
from kshot.methods.prompting.presets import PRESETS, preset_overrides
from kshot.methods.prompting.search import SearchConfig, SearchResult, read_candidates, search_attributes
from kshot.methods.prompting.tokens import content_ids, specials
from kshot.methods.prompting.tower import TextTower

__all__ = [
    "BENCHMARKS",
    "CLASS",
    "PRESETS",
    "Benchmark",
    "GroupSpec",
    "Layout",
    "Learned",
    "PromptLearner",
    "SearchConfig",
    "SearchResult",
    "TextTower",
    "build_layout",
    "content_ids",
    "explain",
    "find_benchmark",
    "frozen",
    "get_benchmark",
    "load_benchmark",
    "load_prompt_method",
    "nearest_words",
    "preset_overrides",
    "read_candidates",
    "search_attributes",
    "specials",
]
