"""Interop with Jittor users: export kshot artifacts as Jittor `.pkl` files and compare PyTorch with Jittor."""
