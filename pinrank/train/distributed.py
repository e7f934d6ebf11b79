"""Data-parallel plumbing shared by both trainers and the sharded embedding job.

A run is distributed when it is started by `torchrun` with WORLD_SIZE > 1
(`from_env`); everything else gets `SINGLE`: every helper here is then a
no-op and the trainers keep their single-process path, bit for bit.

Conventions the trainers follow (docs/distributed.md):

- every rank draws the same *global* batch from the same seeded RNG and keeps
  a contiguous part of it (`even_bounds`, `weighted_bounds`): the data RNG stays in
  lockstep, so a checkpoint written by rank 0 resumes every rank, and a
  W-rank run follows the single-process run with the same global batch;
- a rank's loss is its share of the global mean (sum of its terms / global
  count) times W, because DDP *averages* gradients over ranks: the averaged
  gradient is then exactly the single-process gradient of the global batch;
- only rank 0 writes checkpoints, curves, metrics and progress bars.
"""

from __future__ import annotations

import gc
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a data-parallel run (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks (float64); the values themselves when alone."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.cpu().tolist()

    def wrap(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """`module` in DistributedDataParallel (on this rank's device), or itself when alone.

        Buffers are synced once, at wrap time, not before every forward: every
        rank updates them identically (the count-min sketch sees the global
        labels), and re-sending the frozen item table each step would be pure
        overhead. Keep a reference to the result until backward has run: DDP's
        gradient hooks hold it weakly.
        """
        if not self.enabled:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False,
                                       find_unused_parameters=find_unused_parameters)


SINGLE = DistContext()


def even_bounds(n: int, parts: int) -> np.ndarray:
    """[parts + 1] cut points of range(n) into contiguous near-equal parts (np.array_split's)."""
    q, r = divmod(int(n), int(parts))
    sizes = np.full(parts, q, dtype=np.int64)
    sizes[:r] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def weighted_bounds(weights: np.ndarray, parts: int) -> np.ndarray:
    """[parts + 1] cut points splitting items with `weights` into contiguous parts
    of about equal total weight, each holding at least one item."""
    w = np.asarray(weights, dtype=np.float64)
    n = w.size
    if n < parts:
        raise ValueError(f"cannot split {n} items into {parts} non-empty parts")
    cum = np.cumsum(w)
    targets = cum[-1] * np.arange(1, parts) / parts
    cuts = np.searchsorted(cum, targets, side="left") + 1
    # Keep every part non-empty: cut k lies in [k, n - (parts - k)].
    k = np.arange(1, parts)
    cuts = np.clip(cuts, k, n - (parts - k))
    for i in range(1, cuts.size):  # strictly increasing after the clip
        cuts[i] = max(cuts[i], cuts[i - 1] + 1)
    return np.concatenate([[0], cuts, [n]]).astype(np.int64)


class _AllGather(torch.autograd.Function):
    """all_gather of equal-shaped blocks -> [W, ...]; backward sums every rank's
    gradient for this rank's block (an all_reduce, then this rank's slice).

    torch.distributed.nn.functional.all_gather does the same but is deprecated
    in favour of a private API; this needs only public collectives, on gloo and NCCL.
    """

    @staticmethod
    def forward(fctx: Any, x: Tensor, rank: int, world_size: int) -> Tensor:  # type: ignore[override]
        fctx.rank = rank
        x = x.contiguous()
        blocks = [torch.empty_like(x) for _ in range(world_size)]
        torch.distributed.all_gather(blocks, x)
        return torch.stack(blocks)

    @staticmethod
    def backward(fctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)
        return grad[fctx.rank], None, None


def gather_rows(x: Tensor, sizes: Sequence[int], ctx: DistContext) -> list[Tensor]:
    """Every rank's `x` ([sizes[rank], ...] here), in rank order, differentiably.

    Collectives need equal shapes, so rows are padded to max(sizes) and cut
    back. Backward sums the gradient every rank's loss sends to each block, so
    an embedding computed on one rank and used as a negative by all of them
    gets the gradient of all their losses.
    """
    if not ctx.enabled:
        return [x]
    if len(sizes) != ctx.world_size or x.size(0) != sizes[ctx.rank]:
        raise ValueError(f"rank {ctx.rank}: {x.size(0)} rows, but sizes say {list(sizes)}")
    width = max(1, max(sizes))
    pad = x.new_zeros((width - x.size(0), *x.shape[1:]))
    blocks = _AllGather.apply(torch.cat([x, pad]), ctx.rank, ctx.world_size)
    return [blocks[r, :n] for r, n in enumerate(sizes)]


def _backend(choice: str) -> str:
    if choice not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {choice!r}")
    if choice == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if choice == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend nccl needs CUDA GPUs; use gloo on CPU")
    return choice


def world_size_from_env() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not under torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def from_env(backend: str = "auto") -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT); `SINGLE` when WORLD_SIZE is unset or 1.

    `auto` picks NCCL with one GPU per local rank when CUDA is available, gloo
    on CPU otherwise.
    """
    world = world_size_from_env()
    if world <= 1:
        return SINGLE
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {', '.join(missing)} unset: start the run with torchrun")
    name = _backend(backend)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cpu")
    if name == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(name, init_method="env://", rank=rank, world_size=world)
    return DistContext(rank, world, local_rank, name, device)


def shutdown(ctx: DistContext, finished: bool = True) -> None:
    """Leave the process group; after a run that `finished`, all ranks leave together.

    Gloo tears a rank's connections down when it leaves; a rank that left
    while rank 0 was still evaluating or merging aborted now and then
    ("terminate called without an active exception", seen in CI), so the
    ranks first wait for each other in a barrier (bounded by the group's
    timeout, 30 min by default; a timeout is reported and the rank leaves
    anyway). Not after an error: the other ranks may be inside a different
    collective, and torchrun stops them. Objects that still hold the group
    (a DDP wrapper caught in a reference cycle) are collected first, so the
    group really ends here rather than during interpreter shutdown.
    """
    if not (ctx.enabled and torch.distributed.is_initialized()):
        return
    gc.collect()
    if finished:
        try:
            torch.distributed.barrier()
        except RuntimeError as exc:  # DistBackendError and timeouts are RuntimeErrors
            print(f"rank {ctx.rank}: leaving without the others ({exc})", file=sys.stderr)
    torch.distributed.destroy_process_group()


@contextmanager
def distributed_from_env(backend: str = "auto") -> Iterator[DistContext]:
    """`from_env`, and the group left at the end (also on an error: torchrun
    then stops the other ranks)."""
    ctx = from_env(backend)
    finished = False
    try:
        yield ctx
        finished = True
    finally:
        shutdown(ctx, finished)


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's `obj` on every rank (pickled); `obj` itself when alone."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.is_main else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, ctx: DistContext) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (rank order), None on the others; [obj] alone."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out
