"""Tuning across processes: ``accelerate launch`` (or ``torchrun``) with DDP or FSDP2.

A launch starts one process per device (``WORLD_SIZE`` > 1) and every process runs the same
command; :func:`current` gives each its :class:`Ranks` (one process: a stand-in whose every
method is a no-op, and accelerate is not imported). How one optimiser step is shared, with
``B = TuneConfig.batch_size`` the *global* batch:

* batch ``s`` is a pure function of ``(seed, s)`` (:class:`~reptune.tuning.items.BalancedBatches`),
  so every process draws the same ``B`` items and keeps a contiguous share (:meth:`Ranks.shard`);
  a twin item (both replies of one fact) stays on one process. A process left without rows
  runs one stand-in row whose losses count zero, so FSDP's collectives stay in step.
* every loss term is a mean over its units (rows, twin pairs, completion tokens, selected
  positions, retain positions); each process multiplies its local mean by
  ``world_size * local_units / global_units`` (:meth:`Ranks.scales`), so the mean over the
  processes of their losses is the one-process loss of the whole batch, and the mean of their
  gradients its gradient.
* gradients are averaged over the processes: with DDP (accelerate's ``MULTI_GPU`` /
  ``MULTI_CPU``) by one all-reduce after the backward (:meth:`Ranks.sync_gradients`), because a
  tuning step runs several forwards (shared prompt prefix, replies, retain batch, LoRA base) and,
  with ``routing: paper``, one ``autograd.grad`` per loss term, which torch's DDP wrapper (one
  forward, then ``backward()``) cannot follow; with FSDP2 by its own reduce-scatter in the backward
  (the model is sharded by accelerate's ``prepare``; module identity, names and hooks stay).
* logged losses and validation losses are averaged over the processes (the same numbers on every
  process), so every process takes the same early-stopping and NaN decisions.
* the main process alone writes checkpoints and outputs; sharded tensors are gathered to it first.

Not supported here (a one-line error): FSDP version 1, FSDP with LoRA or ``routing: paper``,
FSDP's ``cpu_ram_efficient_loading``, DeepSpeed and the other accelerate back-ends, accelerate's own
``--mixed_precision`` (reptune's ``--precision`` applies its autocast itself).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch

from reptune.errors import ReptuneError

T = TypeVar("T")


def launched() -> bool:
    """Whether this process is one of several started by ``accelerate launch`` / ``torchrun``."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


class Ranks:
    """This process's place in a launch and the few collectives tuning needs (accelerate's).

    Args:
        accelerator: an ``accelerate.Accelerator`` of a launch, or ``None`` for one process.
    """

    def __init__(self, accelerator: Any | None = None) -> None:
        multi = accelerator is not None and accelerator.num_processes > 1
        self.accelerator = accelerator if multi else None
        self.rank = accelerator.process_index if multi else 0
        self.world_size = accelerator.num_processes if multi else 1
        self.fsdp = bool(multi and accelerator.is_fsdp2)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The process that writes files and shows progress (rank 0)."""
        return self.rank == 0

    @property
    def mode(self) -> str | None:
        """``"ddp"``, ``"fsdp"`` or ``None`` (one process): recorded in ``metrics.json``."""
        return None if not self.distributed else ("fsdp" if self.fsdp else "ddp")

    def load_device(self, requested: str = "auto") -> str:
        """Where this process loads the model: ``requested`` alone; with DDP its own device
        (``cuda:LOCAL_RANK`` or ``cpu``); with FSDP the CPU (``prepare`` moves each shard to the device)."""
        if not self.distributed:
            return requested
        return "cpu" if self.fsdp else str(self.accelerator.device)

    def shard(self, rows: Sequence[T]) -> tuple[list[T], bool]:
        """This process's contiguous share of a global batch, and whether it holds real rows.

        Process ``r`` of ``W`` keeps ``rows[r*n//W : (r+1)*n//W]``; one left without rows gets
        ``rows[:1]`` as a stand-in and ``False`` (its losses must count zero, see :meth:`scales`).
        """
        if not self.distributed:
            return list(rows), True
        count = len(rows)
        mine = list(rows[self.rank * count // self.world_size : (self.rank + 1) * count // self.world_size])
        return (mine, True) if mine else (list(rows[:1]), False)

    def scales(self, units: torch.Tensor) -> torch.Tensor:
        """Per loss term, the factor that turns this process's local mean into its share.

        Args:
            units: ``[terms]`` float64, how many units (rows, pairs, tokens, positions) each term's
                local mean is over (0 for a stand-in row).

        Returns:
            ``world_size * units / global_units`` (``[terms]`` float64; global 0 counts as 1): the
            mean over processes of ``local_mean * scale`` is the mean over the whole batch.
        """
        total = self.accelerator.reduce(units, reduction="sum")
        return self.world_size * units / total.clamp_min(1.0)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over processes of a tensor every process holds (one process: ``values`` itself)."""
        if not self.distributed:
            return values
        return self.accelerator.reduce(values, reduction="mean")

    def sync_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """DDP: average the gradients over the processes (one all-reduce of them all, flattened).

        A parameter without a gradient counts as zeros (it keeps ``None`` when it has none anywhere).
        FSDP2 has reduce-scattered the gradients in the backward already; one process: nothing to do.
        """
        if not self.distributed or self.fsdp or not params:
            return
        have = torch.tensor([float(param.grad is not None) for param in params], device=params[0].device)
        flat = torch.cat([(param.grad if param.grad is not None else torch.zeros_like(param)).reshape(-1) for param in params])
        merged = self.accelerator.reduce(torch.cat([flat, have]), reduction="mean")
        offset = 0
        for index, param in enumerate(params):
            size = param.numel()
            if merged[flat.numel() + index] > 0:
                param.grad = merged[offset : offset + size].view_as(param).to(param.dtype)
            offset += size

    def barrier(self) -> None:
        if self.distributed:
            self.accelerator.wait_for_everyone()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the body on the main process first, then on the others (``main_process_first``): e.g.
        a model load that may fill a cache (a GGUF conversion) once."""
        if not self.distributed:
            yield
            return
        with self.accelerator.main_process_first():
            yield

    def broadcast_int(self, value: int) -> int:
        """The main process's ``value`` on every process (a tensor broadcast; nothing is pickled)."""
        if not self.distributed:
            return value
        from accelerate.utils import broadcast

        return int(broadcast(torch.tensor([value], dtype=torch.int64, device=self.accelerator.device)).item())

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[torch.nn.Module, Any]:
        """FSDP2: shard ``model`` and point ``optimizer`` at the shards (accelerate's ``prepare``).

        Other modes: both come back unchanged (DDP keeps a full replica per process).
        """
        if not self.fsdp:
            return model, optimizer
        return self.accelerator.prepare(model, optimizer)

    def full(self, tensor: torch.Tensor) -> torch.Tensor:
        """A CPU copy of the whole of ``tensor`` (an FSDP shard is gathered: every process must call)."""
        from torch.distributed.tensor import DTensor

        if isinstance(tensor, DTensor):
            return tensor.detach().full_tensor().to("cpu").contiguous()
        return tensor.detach().to("cpu", copy=True).contiguous()

    def local(self, like: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        """``full`` laid out like ``like``: this process's FSDP shard of it, or the whole on ``like``'s device."""
        if self.fsdp:
            from torch.distributed.tensor import DTensor, distribute_tensor

            if isinstance(like, DTensor):
                # every process read the same full tensor from disk: each cuts its own shard, no communication
                return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)
        return full.to(like.device)

    def model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """FSDP2: the full state dict on the main process, gathered one tensor at a time (every process
        must call; the others get an empty dict). Other modes: ``None`` (save the model's own).

        Not ``accelerator.get_state_dict``: on the CPU (gloo; accelerate 1.16, torch 2.13) it handed
        back the un-gathered shards, which cannot be saved.
        """
        if not self.fsdp:
            return None
        state = {}
        for name, tensor in model.state_dict().items():
            whole = self.full(tensor)  # a collective for a shard: every process, same order
            if self.is_main:
                state[name] = whole
        return state


_CURRENT: Ranks | None = None


def current(accelerator: Any | None = None, *, device: str = "auto") -> Ranks:
    """The :class:`Ranks` of this process (built once per process).

    Args:
        accelerator: an ``accelerate.Accelerator`` to use; by default one is made when this
            process was started by ``accelerate launch``/``torchrun`` with several processes.
        device: the command's ``--device``: ``cpu`` (or a machine without CUDA) makes the
            processes talk over gloo on the CPU.

    Raises:
        ReptuneError: an accelerate set-up reptune does not support (see the module docstring).
    """
    global _CURRENT
    if accelerator is None and _CURRENT is not None:
        return _CURRENT
    if accelerator is None and not launched():
        _CURRENT = Ranks()
        return _CURRENT
    if accelerator is None:
        from accelerate import Accelerator

        cpu = str(device).startswith("cpu") or not torch.cuda.is_available()
        accelerator = Accelerator(cpu=cpu)
    _check_supported(accelerator)
    _CURRENT = Ranks(accelerator)
    return _CURRENT


def _check_supported(accelerator: Any) -> None:
    """Refuse the accelerate set-ups the tuning loop does not follow (one line each)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    supported = {DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU, DistributedType.FSDP}
    if kind not in supported:
        raise ReptuneError(f"accelerate's {kind.value} is not supported for tuning: launch with DDP (the default) or FSDP2 (--use_fsdp --fsdp_version 2)")
    if kind == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ReptuneError("FSDP version 1 is not supported: launch with --use_fsdp --fsdp_version 2")
    if kind == DistributedType.FSDP and getattr(accelerator.state.fsdp_plugin, "cpu_ram_efficient_loading", False):
        raise ReptuneError("--fsdp_cpu_ram_efficient_loading is not supported: every process loads the model into CPU memory before FSDP shards it")
    if accelerator.mixed_precision != "no":
        raise ReptuneError(
            f"accelerate's --mixed_precision {accelerator.mixed_precision} is not used by reptune: leave it at 'no' and set --precision (bf16 autocast) instead"
        )
