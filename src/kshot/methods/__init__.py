"""Few-shot methods behind one interface. Each module registers one method in `METHODS`."""

from kshot.methods.base import METHODS, Method, Task, config_to_dict, create, load

# Method modules are imported here explicitly (no star imports); each registers itself.
from kshot.methods import zeroshot  # noqa: F401
from kshot.methods import linear_probe  # noqa: F401
from kshot.methods import lpp  # noqa: F401
from kshot.methods import clip_adapter  # noqa: F401
from kshot.methods import inmap  # noqa: F401
from kshot.methods import tip_adapter  # noqa: F401
from kshot.methods import tip_adapter_f  # noqa: F401
from kshot.methods import ape  # noqa: F401
from kshot.methods import ape_t  # noqa: F401
from kshot.methods import track1  # noqa: F401
from kshot.methods import coop  # noqa: F401
from kshot.methods import cocoop  # noqa: F401
from kshot.methods import atprompt  # noqa: F401
from kshot.methods import kgcoop  # noqa: F401
from kshot.methods import maple  # noqa: F401
from kshot.methods import promptsrc  # noqa: F401
from kshot.methods import atprompt_maple  # noqa: F401
from kshot.methods import atprompt_promptsrc  # noqa: F401
from kshot.methods import gda  # noqa: F401
from kshot.methods import proker  # noqa: F401
from kshot.methods import clap  # noqa: F401
from kshot.methods import tda  # noqa: F401
from kshot.methods import clip_lora  # noqa: F401
from kshot.methods import auto  # noqa: F401

__all__ = ["METHODS", "Method", "Task", "config_to_dict", "create", "load"]
