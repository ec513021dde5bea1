"""Few-shot methods behind one interface. Each module registers one method in `METHODS`."""

from kshot.methods.base import METHODS, Method, Task, create, load

# Method modules are imported here explicitly (no star imports); each registers itself.
from kshot.methods import zeroshot  # noqa: F401

__all__ = ["METHODS", "Method", "Task", "create", "load"]
