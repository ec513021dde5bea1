"""Sharded feature extraction over ranks and nodes with torchrun + torch.distributed (no cluster code of our own).

A `Shard` says which share of a cache entry this process computes and how it meets the other ranks. The unit of work
is the feature store's part file (`part-<view>-<chunk>`): parts are numbered view-major and rank r computes the parts
whose number % world == r (every view; with one view and a chunk count divisible by the world size this is plain
"chunk % world == r"). Ranks then meet:

* with a process group (what `torchrun` + `process_group` give): `torch.distributed.barrier`;
* without one (independent jobs sharing a folder, tests): by polling the cache folder until the parts / the joined
  manifest appear, up to `Shard.timeout` seconds (0 = check once, don't wait).

Rank 0 then joins the parts into the entry; the other ranks load the joined entry. All ranks must see the same cache
folder (on several nodes: a shared filesystem). See docs/scale-out.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterator

import torch

from kshot.errors import CacheError, ConfigError

log = logging.getLogger(__name__)

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_S = 24 * 3600.0  # waits are bounded by the slowest rank's share; torchrun stops all ranks if one dies


@dataclass(frozen=True)
class Shard:
    """This process's share of a sharded extraction.

    Attributes:
        rank: global rank (0 joins the parts).
        world: number of ranks.
        local_rank: rank within the node (picks the GPU, cuda:LOCAL_RANK).
        timeout: seconds a rank waits for the others (process-group timeout, or filesystem-poll limit); 0 = don't
            wait: fail at once, naming the missing parts. Default 24 h: a resumed rank may wait a whole share.
        poll: seconds between filesystem checks when no process group is initialised.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    timeout: float = DEFAULT_TIMEOUT_S
    poll: float = 1.0

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ConfigError(f"invalid shard: rank {self.rank} of world size {self.world}")
        if self.timeout < 0 or self.poll <= 0:
            raise ConfigError(f"invalid shard timing: timeout={self.timeout}, poll={self.poll}")

    def owns(self, part_number: int) -> bool:
        """Whether this rank computes part `part_number` (parts numbered view-major from 0)."""
        return part_number % self.world == self.rank

    @property
    def has_group(self) -> bool:
        """True when a torch.distributed process group of exactly this rank/world is initialised."""
        import torch.distributed as dist

        return (self.world > 1 and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() == self.world and dist.get_rank() == self.rank)

    def barrier(self) -> None:
        """Wait for every rank (process group only; a no-op for world 1)."""
        if self.has_group:
            import torch.distributed as dist

            dist.barrier()

    def wait_until(self, missing: Callable[[], list[str]], what: str) -> None:
        """Poll until `missing()` is empty; after `timeout` seconds raise CacheError naming what is still missing.

        Args:
            missing: returns the names of the things not there yet (empty list = done).
            what: how the message names the wait (e.g. 'parts from other ranks in /cache/abc').
        """
        deadline = time.monotonic() + self.timeout
        while True:
            left = missing()
            if not left:
                return
            if time.monotonic() >= deadline:
                shown = ", ".join(left[:8]) + (f" and {len(left) - 8} more" if len(left) > 8 else "")
                waited = "without waiting" if self.timeout == 0 else f"after waiting {self.timeout:g} s"
                raise CacheError(f"rank {self.rank}/{self.world}: {what} are missing {waited}: {shown}. The parts "
                                 "on disk are kept; re-run (any world size) to compute only the missing ones")
            time.sleep(min(self.poll, max(deadline - time.monotonic(), 0.01)))


def shard_from_env(required: bool = False, timeout: float = DEFAULT_TIMEOUT_S) -> Shard | None:
    """The `Shard` torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK, or None outside torchrun.

    Args:
        required: raise ConfigError (naming the missing variables) instead of returning None.
        timeout: see `Shard.timeout`.
    """
    missing = [v for v in TORCHRUN_VARS if v not in os.environ]
    if missing:
        if required:
            raise ConfigError(f"--distributed needs the torchrun environment, but {', '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} not set; launch with "
                              "`torchrun --nproc-per-node N -m kshot extract ...` (see docs/scale-out.md)")
        return None
    try:
        rank, world, local = (int(os.environ[v]) for v in TORCHRUN_VARS)
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                          + ", ".join(f"{v}={os.environ[v]!r}" for v in TORCHRUN_VARS)) from None
    return Shard(rank=rank, world=world, local_rank=local, timeout=timeout)


def rank_device(shard: Shard | None, device: str | None) -> str:
    """The device a rank runs on: 'cuda' (or None with CUDA present) becomes cuda:LOCAL_RANK; others stay as given."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if shard is not None and device == "cuda":
        if shard.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {shard.local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                              "use --nproc-per-node <= the GPU count")
        return f"cuda:{shard.local_rank}"
    return device


@contextlib.contextmanager
def process_group(shard: Shard | None, device: str) -> Iterator[None]:
    """Initialise torch.distributed from the torchrun environment for the duration of the block.

    gloo on CPU, nccl on CUDA (with the rank's GPU made current). Does nothing for `shard=None` or when a group is
    already initialised (the caller owns it); destroys the group it created on exit.
    """
    import torch.distributed as dist

    if shard is None or not dist.is_available() or dist.is_initialized():
        yield
        return
    missing = [v for v in RENDEZVOUS_VARS if v not in os.environ]
    if missing:
        raise ConfigError(f"rank {shard.rank}: {', '.join(missing)} not set; torchrun sets them — launch with "
                          "`torchrun --nproc-per-node N -m kshot extract ...`")
    dev = torch.device(device)
    kwargs: dict = {"backend": "nccl" if dev.type == "cuda" else "gloo",
                    "timeout": timedelta(seconds=max(shard.timeout, 1.0))}
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        kwargs["device_id"] = dev
    dist.init_process_group(rank=shard.rank, world_size=shard.world, **kwargs)
    log.info("rank %d/%d: %s process group on %s", shard.rank, shard.world, kwargs["backend"], device)
    try:
        yield
    finally:
        dist.destroy_process_group()
