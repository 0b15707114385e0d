"""One run over several processes: ``forgetlab run`` started under ``accelerate launch`` or ``torchrun``.

accelerate sets up the process group (gloo on CPUs, NCCL on GPUs) and the rank's device; for
``train.distributed: ddp`` the learner is wrapped in torch's DDP. ``fsdp`` is PyTorch's FSDP2 (``fully_shard``: each of the backbone's layers and
then the rest): weights, gradients and optimizer state are sharded while a task trains; after it, every
rank gathers the whole weights (``full_weights``) for the evaluation, the method's ``after_task`` and
the checkpoint, and they are sharded again when the next task trains. DeepSpeed refuses (not built yet).
What accelerate does not know, this module does, for the engine, the kinds and the methods:

- every rank draws its share ``idx[rank::world]`` of each global batch, and the cross-entropy of a
  training step is rescaled to the global mean (``global_mean``), so a step's gradient is the one a
  single process computes on the whole batch;
- evaluation items are split the same way and gathered back into order (``map``), sums are all-reduced;
- only the main rank writes (results, report, store, trackers, checkpoints); any rank that fails
  marks the run failed.

One process (no launcher, or a launcher with one process) is ``Ranks()``: every call is a no-op.
The current ranks are a module global (``current()``), set once per process by ``setup``.
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import UserError

T = TypeVar("T")
STRATEGIES = ("ddp", "fsdp", "deepspeed")
BUILT = ("ddp", "fsdp")


class Ranks:
    """This process's place among the run's processes, and the collectives the run uses."""

    def __init__(self, accelerator=None, strategy: str | None = None):
        self.accelerator, self.strategy = accelerator, strategy
        self.world = accelerator.num_processes if accelerator else 1
        self.rank = accelerator.process_index if accelerator else 0
        self.main = self.rank == 0
        self.device = accelerator.device if accelerator else torch.device("cpu")   # where collectives' tensors live (NCCL: the GPU)
        self._step = self._standin = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def sharded(self) -> bool:
        """Whether the weights are sharded over the ranks while a task trains (FSDP)."""
        return self.active and self.strategy == "fsdp"

    # -- splitting work ----------------------------------------------------------------------
    def shard(self, items: Sequence[T]) -> Sequence[T]:
        """This rank's share of ``items``: every ``world``-th from ``rank`` (a strided split keeps the
        shares within one item of each other, also of a length-sorted list)."""
        return items[self.rank::self.world] if self.active else items

    def map(self, fn: Callable[[list], list], items: Sequence) -> list:
        """``fn`` over ``items`` (one result per item), each rank on its share, gathered back in order."""
        if not self.active:
            return fn(items)
        mine = self.shard(items)
        parts = self.gather(fn(mine) if len(mine) else [])
        out = [None] * len(items)
        for r, part in enumerate(parts):
            out[r::self.world] = part
        return out

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order."""
        if not self.active:
            return [obj]
        parts = [None] * self.world
        dist.all_gather_object(parts, obj)
        return parts

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums of ``values`` over the ranks (float64)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def sum_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each tensor summed over the ranks, in place."""
        if self.active:
            for t in tensors.values():
                dist.all_reduce(t)
        return tensors

    def check_same(self, what: str, tensors: dict[str, torch.Tensor]) -> None:
        """Raise if ``tensors`` (a method's state) differ between the ranks, compared by a checksum of
        each: a method whose state drifted apart per rank would give numbers no single process gives."""
        if not self.active:
            return
        sums = {k: (float(t.double().sum()), float(t.double().abs().sum()), tuple(t.shape)) for k, t in sorted(tensors.items())}
        parts = self.gather(sums)
        for rank, other in enumerate(parts[1:], start=1):
            if other != parts[0]:
                key = next((k for k in parts[0].keys() | other.keys() if parts[0].get(k) != other.get(k)), "?")
                raise RuntimeError(f"{what} differs between rank 0 and rank {rank} ({key})")

    def broadcast(self, obj: T) -> T:
        """The main rank's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    @contextmanager
    def terms_held(self) -> Iterator[None]:
        """Ignore SIGTERM for the block: a rank marking its run failed is not cut short by the launcher
        stopping the others (its SystemExit would skip the writes); the failure is re-raised after."""
        if not self.active or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    # -- the training step -------------------------------------------------------------------
    def wrap(self, learner: torch.nn.Module) -> torch.nn.Module:
        """The learner made ready to train over the ranks, gradients averaged over them in backward:
        wrapped in DDP, or sharded (FSDP2, in place; the optimizer is built after, over the shards)."""
        if not self.active:
            return learner
        if not self.sharded:
            # DDP built here, not by accelerator.prepare_model: accelerate keeps every model it prepares,
            # and a wrapper per task would keep a gradient-sized set of buckets per task alive
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(learner, device_ids=ids, find_unused_parameters=True, broadcast_buffers=False)
        from torch.distributed.fsdp import FSDPModule, fully_shard

        from .models.backbones import layer_list

        if not isinstance(learner, FSDPModule):
            for block in layer_list(learner.backbone.model):
                fully_shard(block)
            fully_shard(learner)
            return learner
        trains = {n: p.requires_grad for n, p in learner.named_parameters()}   # set on the whole weights since
        for m in _fsdp_modules(learner):                 # gathered whole after the last task: shard again
            m.reshard()
            m.set_reshard_after_forward(True)
        for n, p in learner.named_parameters():          # (a new task's head block, a frozen backbone)
            p.requires_grad_(trains[n])
        return learner

    def full_weights(self, learner: torch.nn.Module) -> None:
        """After a task trained (FSDP): every rank gathers the whole weights and keeps them until the
        next task trains, so evaluation, the method's hooks and checkpoints see an ordinary model."""
        if self.sharded:
            for m in _fsdp_modules(learner):
                m.unshard()
                m.set_reshard_after_forward(False)

    def full_state(self, learner: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The learner's whole state dict on every rank (FSDP: the shards gathered; every rank must call it)."""
        from torch.distributed.tensor import DTensor

        state = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in learner.state_dict().items()}
        self.full_weights(learner)                       # state_dict() put the shards back: gather again
        return state

    @contextmanager
    def no_sync(self, model: torch.nn.Module, skip: bool) -> Iterator[None]:
        """No gradient reduction in this backward (a micro-batch before the optimizer step)."""
        if not (self.active and skip):
            yield
        elif self.sharded:
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)
        else:
            with model.no_sync():
                yield

    @contextmanager
    def sharded_step(self, standin: bool = False) -> Iterator[None]:
        """A training step in which ``global_mean`` rescales the cross-entropy. ``standin``: this rank's
        share of the batch was empty (a last batch smaller than the world), so it runs a forward and
        backward on a stand-in example that counts for nothing, as DDP needs every rank to."""
        self._step, self._standin = True, standin
        try:
            yield
        finally:
            self._step = self._standin = False

    def global_mean(self, local_mean: torch.Tensor, count: int) -> torch.Tensor:
        """A mean over this rank's ``count`` rows made the share of the global mean over every rank's
        rows, times ``world``: DDP averages the ranks' gradients, so the step's gradient becomes that of
        the global mean, as one process computes it on the whole batch (also when the shares differ
        in size: the last batch of an epoch, token counts). Outside a sharded training step: unchanged."""
        if not (self.active and self._step):
            return local_mean
        count = 0 if self._standin else count
        total = torch.tensor([float(count)], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return local_mean * (count * self.world / max(total.item(), 1.0))


_current = Ranks()


def current() -> Ranks:
    return _current


def launched_world() -> int:
    """The number of processes a launcher (torchrun, accelerate launch) started, 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(strategy: str | None, device: str) -> Ranks:
    """The ranks of this process: under a launcher with several processes, accelerate's process group
    and the strategy; otherwise one process, whatever ``train.distributed`` says."""
    global _current
    if launched_world() == 1:
        _current = Ranks()
        return _current
    if _current.active:
        return _current
    if strategy is None:
        raise UserError(f"train.distributed: {launched_world()} processes were launched; "
                        f"set train.distributed to one of {', '.join(STRATEGIES)}")
    if strategy not in BUILT:
        raise UserError(f"train.distributed: {strategy} is not available yet; use {' or '.join(BUILT)} "
                        "(docs/scaling.md)")
    try:
        from accelerate import Accelerator
    except ImportError:
        raise UserError("train.distributed: a run over several processes needs accelerate: "
                        "pip install 'forgetlab[distributed]'") from None

    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="no")      # train.precision decides
    launched = accelerator.distributed_type.value
    if launched in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise UserError(f"train.distributed: {strategy} decides how the run is spread, but the accelerate config "
                        f"asks for {launched}; launch with a multi-GPU accelerate config "
                        "(examples/scaling/accelerate-multi-gpu.yaml) or torchrun")
    _current = Ranks(accelerator, strategy)
    signal.signal(signal.SIGTERM, _raise_on_term)      # a launcher stopping the run: marked failed
    return _current


def _fsdp_modules(module: torch.nn.Module) -> list[torch.nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def _raise_on_term(signum, frame) -> None:
    raise SystemExit(128 + signum)
