"""kshot.continual: PackNet (Mallya & Lazebnik, CVPR 2018) and continual baselines over a task sequence, with the
accuracy matrix, forgetting, checkpoints that resume, and reports. Start at `load_config` + `run`, or the CLI
`kshot continual run|eval|report` (`cli.app`)."""

from .config import ContinualConfig, NetworkConfig, PhaseConfig, PRESETS, ScheduleConfig, TaskSpec, load_config
from .learners import LEARNERS, Learner
from .metrics import average_accuracy, backward_transfer, forgetting, summarise
from .networks import NETWORKS, build_network
from .packnet import PackNet
from .report import write_report
from .sequence import Hooks, PhaseEvent, RunState, evaluate_checkpoint, load_learner, plan, run, run_method

__all__ = [
    "ContinualConfig", "Hooks", "LEARNERS", "Learner", "NETWORKS", "NetworkConfig", "PRESETS", "PackNet",
    "PhaseConfig", "PhaseEvent", "RunState", "ScheduleConfig", "TaskSpec", "average_accuracy", "backward_transfer",
    "build_network", "evaluate_checkpoint", "forgetting", "load_config", "load_learner", "plan", "run", "run_method",
    "summarise", "write_report",
]
