"""Data-parallel plumbing for `torchrun`: one process per GPU (or per CPU slot with gloo), each holding
the frozen towers and a replica of every connector. Only the connectors' gradients cross ranks, as
sums (the loss is already divided by the step's global token count), so N ranks take the same steps
as one. Without torchrun's variables, or with WORLD_SIZE=1, every helper is a no-op: the 1-rank path
runs exactly as before."""
from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist

_counts_group = None  # gloo group for the few host-side numbers: summing them on NCCL would sync the GPU


def init_from_env(device_setting: str = "auto") -> None:
    """Joins the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT):
    NCCL when the run is on CUDA, gloo on CPU."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    on_cuda = torch.cuda.is_available() and not device_setting.startswith("cpu")
    if on_cuda:
        torch.cuda.set_device(local_rank())  # before init: NCCL binds each rank to its own GPU
    # a long first feature-cache build on rank 0 keeps the others at a barrier: a generous timeout
    timeout = datetime.timedelta(hours=2)
    dist.init_process_group("nccl" if on_cuda else "gloo", timeout=timeout)
    global _counts_group
    _counts_group = dist.new_group(backend="gloo", timeout=timeout) if on_cuda else None


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def device_for(name: str) -> torch.device:
    """`cuda` means this rank's GPU (cuda:LOCAL_RANK) under torchrun; anything else is taken as given."""
    if name == "cuda" and active():
        return torch.device("cuda", local_rank())
    return torch.device(name)


def all_reduce_sums(values: list[float] | torch.Tensor) -> list[float]:
    """Element-wise sums over ranks of a few numbers (counts, loss sums, flags), in float64 so that
    token counts stay exact; on one rank the values come back as they are."""
    if not active():
        return values.tolist() if isinstance(values, torch.Tensor) else list(values)
    t = torch.as_tensor(values, dtype=torch.float64).cpu()
    dist.all_reduce(t, group=_counts_group)
    return t.tolist()


def gather_objects(obj) -> list:
    """Every rank's `obj` (small, picklable), in rank order, on every rank."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj, group=_counts_group)
    return out


def sum_gradients(modules: list[torch.nn.Module]) -> None:
    """Sums the trainable parameters' gradients over ranks in one flat all-reduce (a rank that had no
    sample in its slice contributes zeros). Not DistributedDataParallel: the connectors of a set run in
    one stacked forward with gradient accumulation, and one explicit sum after the window says exactly
    what is shared."""
    if not active():
        return
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    for p, chunk in zip(params, flat.split([g.numel() for g in grads])):
        if p.grad is None:
            p.grad = chunk.view_as(p).clone()
        else:  # in place: a CUDA graph keeps adding into this tensor
            p.grad.copy_(chunk.view_as(p))


def barrier() -> None:
    if active():
        dist.barrier(group=_counts_group)


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (it writes the split, golden set and feature cache), then the others
    (which find them written): no two ranks write the same file."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def teardown() -> None:
    global _counts_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _counts_group = None
