"""torch.distributed implementation of the loop's Collective: DDP for inner steps, flat all-reduces
for the hyperstep, with a byte counter so benchmarks can report what an outer step communicates."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from auxray.train.collective import Collective


class TorchDistributedCollective(Collective):
    """All-reduces over the default process group (gloo on CPU, NCCL on GPU) set up by Ray Train."""

    def __init__(self, device: torch.device) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = device
        self.bytes_sent = 0
        self.calls = 0

    def all_reduce_mean(self, tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Mean across workers, as one flat buffer (one collective call instead of one per tensor)."""
        if not tensors:
            return tensors
        flat = torch.cat([t.detach().reshape(-1) for t in tensors]).to(self.device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        self.bytes_sent += flat.numel() * flat.element_size()
        self.calls += 1
        out, offset = [], 0
        for t in tensors:
            out.append(flat[offset : offset + t.numel()].view_as(t).to(t.dtype))
            offset += t.numel()
        return tuple(out)

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """DDP over the primary net; the hyperstep uses the bare module with explicit all-reduces."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        dist.barrier()
