"""torch.distributed set-up shared by the torchrun stages: NCCL on GPUs, gloo on CPU."""

import dataclasses
import os

import torch
import torch.distributed as torch_dist

from .errors import PgolfError


@dataclasses.dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self):
        if self.enabled:
            torch_dist.barrier()

    def all_reduce_(self, tensor, op=torch_dist.ReduceOp.SUM):
        if self.enabled:
            torch_dist.all_reduce(tensor, op=op)
        return tensor


def require_gpus(gpus: int):
    """Fail early and clearly when the config asks for GPUs the machine lacks."""
    if gpus > 0 and not torch.cuda.is_available():
        raise PgolfError(
            f"hardware.gpus is {gpus} but no CUDA GPU is visible on this machine; "
            "run the CPU recipe (--configfile recipes/smoke.yaml) or set hardware.gpus: 0"
        )


_holders = 0  # nested init()s: run_all holds the group across stages, each stage's shutdown() then leaves it


def init(gpus: int) -> Dist:
    """Read torchrun's environment (or run as a single process) and join the process group."""
    global _holders
    require_gpus(gpus)
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if gpus > 0:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if gpus > 0 else "gloo", device_id=device if gpus > 0 else None)
    _holders += 1
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


def sync(device: torch.device):
    """Wait for the device's queued work (a no-op on the CPU), so a wall clock read next measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def shutdown():
    """Leave the process group once the outermost init() is done with it."""
    global _holders
    _holders = max(_holders - 1, 0)
    if _holders == 0 and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
