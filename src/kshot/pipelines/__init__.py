"""kshot.pipelines: the Jittor challenge systems as configuration — method, ensemble, cascade/router and specialist
stages over cached features — and `run_challenge`, which goes from a challenge root to a validated result.txt and a
run report. Start at `runner.run_challenge` or `kshot challenge run`."""

from kshot.pipelines.config import PipelineConfig
from kshot.pipelines.configfile import config_from_dict, find_config, load_config, shipped_configs
from kshot.pipelines.groups import ClassInfo, resolve_group
from kshot.pipelines.runner import RunOptions, RunResult, degenerate_reason, run_challenge

__all__ = [
    "ClassInfo",
    "PipelineConfig",
    "RunOptions",
    "RunResult",
    "config_from_dict",
    "degenerate_reason",
    "find_config",
    "load_config",
    "resolve_group",
    "run_challenge",
    "shipped_configs",
]
