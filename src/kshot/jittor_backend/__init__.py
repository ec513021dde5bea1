"""Optional Jittor backend: CLIP's forward and the training-free heads in Jittor, run in a worker subprocess.

Start at `kshot.jittor_backend.client` (`JittorSession`, `jittor_available`). This package's `__init__` imports
nothing, because the worker imports `kshot.jittor_backend.*` in a Jittor interpreter that has only the stdlib, numpy
and Jittor.
"""
