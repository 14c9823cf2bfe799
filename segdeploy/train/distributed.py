"""Distributed training with PyTorch's own engine: torchrun starts the processes, DDP syncs them.

``segdeploy train --nproc N ...`` is the one-machine shortcut: :func:`launch` runs torchrun's own
launcher (``torch.distributed.run``) in the command's process, with a standalone rendezvous on
``localhost`` and a port the system picks, and starts the same command without ``--nproc`` in N
processes; the run's exit code is the command's, and Ctrl-C stops every rank.

``torchrun --nproc-per-node N -m segdeploy train ...`` starts N copies of ``segdeploy train`` and
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each one's
environment. :func:`init_distributed` reads them and joins the process group: gloo on CPU, NCCL
on CUDA with one GPU per process (``cuda:LOCAL_RANK``). Without them, or with ``WORLD_SIZE`` 1,
:data:`SINGLE_PROCESS` makes every hook below a no-op and training is the single-process loop.

What a run of N processes does (:class:`DistributedContext` holds the hooks the loop calls):

* Each rank trains on its own shard of the training set: a ``DistributedSampler`` that draws one
  permutation from ``seed + epoch`` (``set_epoch`` every epoch) and deals it out, padding with
  repeated items so every rank takes the same number of steps.
* ``--batch-size`` is per process (torchrun's convention): the global batch is N times it, and
  the learning rate is not rescaled.
* ``DistributedDataParallel`` all-reduces the gradients, so the parameters stay bit-identical on
  every rank. Augmentation, dropout and loader workers draw from ``seed + rank``.
* BatchNorm: ``SyncBatchNorm`` on NCCL (statistics over the global batch); gloo has none, so each
  rank normalises with its own batch and DDP keeps rank 0's running statistics, which every
  rank copies before validation. The card's ``training["distributed"]`` says which was used.
* Validation: rank ``r`` scores items ``r, r + N, ...``; the confusion matrices are summed with
  ``all_reduce`` and the metric is computed once from the sum, exactly the single-process
  metric on the same predictions (never an average of per-rank mIoU).
* Rank 0 alone reports progress and writes the checkpoint, the state file and the card;
  ``segdeploy train`` prints its plan, progress and summary on rank 0 only (:func:`process_rank`).
* Resume: the state file holds every rank's random streams (``rank_rng``) and the number of
  processes; a run resumes with the same number, each rank from its own streams, so it continues
  as if it had never stopped. Every rank reads the files, so on several machines they must be on
  a shared file system (or copied to each).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from segdeploy.core.errors import SegdeployError

#: What torchrun sets in each process's environment (and what :func:`init_distributed` reads).
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT")

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, nn.Module], torch.Tensor]


class _LossModule(nn.Module):
    """The training loss as one module's forward, so that DDP sees (and synchronises) every
    forward the loss makes, ``forward_with_aux`` included."""

    def __init__(self, model: nn.Module, criterion: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model, self.criterion, self.loss_fn = model, criterion, loss_fn

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, images, targets, self.criterion)


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the run and the hooks the training loop calls.

    With ``world_size`` 1 (:data:`SINGLE_PROCESS`) every hook returns its input unchanged.
    ``owns_group``: :func:`init_distributed` started the process group, so :meth:`finish` ends it.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """More than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that reports progress and writes files."""
        return self.rank == 0

    def seed_rank(self, seed: int, loader_generator: torch.Generator) -> None:
        """Give each rank its own augmentation, dropout and loader-worker streams (``seed +
        rank``); called after the model is built from ``seed`` on every rank."""
        if not self.enabled:
            return
        random.seed(seed + self.rank)
        np.random.seed(seed + self.rank)
        torch.manual_seed(seed + self.rank)
        loader_generator.manual_seed(seed + self.rank)

    def sampler(self, dataset: Dataset, seed: int) -> DistributedSampler | None:
        """This rank's shard of ``dataset``, shuffled from ``seed`` + epoch; ``None`` alone."""
        if not self.enabled:
            return None
        return DistributedSampler(dataset, self.world_size, self.rank, shuffle=True, seed=seed)

    def set_epoch(self, sampler: Any, epoch: int) -> None:
        """Re-seed the shard permutation for ``epoch`` (the same on every rank)."""
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)

    def uses_sync_batchnorm(self) -> bool:
        """Whether BatchNorm layers become ``SyncBatchNorm``: only on NCCL (gloo has none)."""
        return self.enabled and self.backend == "nccl"

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """``model`` with ``SyncBatchNorm`` where the backend supports it (same state dict)."""
        if self.uses_sync_batchnorm():
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def loss_function(
        self, model: nn.Module, criterion: nn.Module, loss_fn: LossFn
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``(images, targets) -> loss``: ``loss_fn`` itself alone, through DDP otherwise."""
        if not self.enabled:
            return lambda images, targets: loss_fn(model, images, targets, criterion)
        device_ids = [self.local_rank] if self.backend == "nccl" else None
        return DistributedDataParallel(_LossModule(model, criterion, loss_fn), device_ids)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (every rank took the same number of steps)."""
        if not self.enabled:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=self._device())
        dist.all_reduce(total)
        return float(total.item()) / self.world_size

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so that each
        validates the very model rank 0 saves."""
        if not self.enabled:
            return
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)

    def shard(self, items: list) -> list:
        """This rank's share of ``items``: ``rank, rank + N, ...`` (all of them alone)."""
        return items if not self.enabled else items[self.rank :: self.world_size]

    def sum_counts(self, matrix: np.ndarray, images: int) -> tuple[np.ndarray, int]:
        """Confusion matrix and image count summed over the ranks (``all_reduce``)."""
        if not self.enabled:
            return matrix, images
        flat = np.append(np.asarray(matrix, dtype=np.int64).reshape(-1), images)
        counts = torch.from_numpy(flat).to(self._device())
        dist.all_reduce(counts)
        summed = counts.cpu().numpy()
        return summed[:-1].reshape(matrix.shape), int(summed[-1])

    def trainer_entries(self, rng: dict[str, Any]) -> dict[str, Any]:
        """What the state file adds in a run of several processes: their number and every
        rank's random streams (``rank_rng``, gathered from ``rng`` of each rank)."""
        if not self.enabled:
            return {}
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, rng)
        return {"world_size": self.world_size, "rank_rng": gathered}

    def check_resume(self, trainer: dict[str, Any], resume: Path) -> None:
        """Refuse to resume a run with another number of processes: the shards, the steps per
        epoch (and so the learning-rate schedule) and the random streams depend on it."""
        saved = trainer.get("world_size", 1)
        if saved != self.world_size:
            how = (
                "without torchrun"
                if saved == 1
                else f"with {saved} processes in all (torchrun --nnodes times --nproc-per-node)"
            )
            raise SegdeployError(
                f"{resume} was trained by {saved} process(es) and this run has "
                f"{self.world_size}; resume it {how}"
            )

    def own_rng(self, trainer: dict[str, Any]) -> dict[str, Any]:
        """This rank's saved random streams (the only ones a single-process state file has)."""
        return trainer["rank_rng"][self.rank] if "rank_rng" in trainer else trainer["rng"]

    def card_entry(self, model: nn.Module, batch_size: int) -> dict[str, Any]:
        """The card's ``training["distributed"]`` entry; nothing in a single-process run."""
        if not self.enabled:
            return {}
        has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        sync = self.uses_sync_batchnorm() and has_batchnorm
        if not has_batchnorm:
            norm = "no BatchNorm layers"
        elif sync:
            norm = "SyncBatchNorm (statistics over the global batch)"
        else:
            norm = f"per-process BatchNorm statistics ({self.backend} has no SyncBatchNorm)"
        return {
            "distributed": {
                "engine": "torch DistributedDataParallel",
                "backend": self.backend,
                "processes": self.world_size,
                "batch_size_per_process": batch_size,
                "global_batch_size": batch_size * self.world_size,
                "sync_batchnorm": sync,
                "batchnorm": norm,
            }
        }

    def barrier(self) -> None:
        """Wait for every rank (so rank 0's files exist when any rank returns)."""
        if self.enabled:
            dist.barrier()

    def finish(self) -> None:
        """End the process group if :func:`init_distributed` started it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def _device(self) -> torch.device:
        # NCCL reduces CUDA tensors only; gloo reduces CPU ones.
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


#: One process: every hook of :class:`DistributedContext` is a no-op.
SINGLE_PROCESS = DistributedContext()


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher setting its variables) started this process."""
    return all(name in os.environ for name in TORCHRUN_VARS)


def init_distributed(device: str) -> tuple[DistributedContext, str]:
    """Join the run torchrun started, if any: ``(context, device this rank trains on)``.

    gloo for a CPU ``device``; NCCL for ``cuda`` (each process on ``cuda:LOCAL_RANK``). A process
    group that the caller already started is used as it is (and left running).

    Raises:
        SegdeployError: CUDA asked for but absent or fewer GPUs than local processes, or
            torchrun's rendezvous variables missing.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) < 2:
        return SINGLE_PROCESS, device
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = "gloo"
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if local_rank >= count:
            raise SegdeployError(
                f"process LOCAL_RANK={local_rank} needs a GPU of its own but this machine has "
                f"{count}; start at most {count} processes per machine (--nproc-per-node)"
            )
        torch.cuda.set_device(local_rank)
        backend, device = "nccl", f"cuda:{local_rank}"
    owns_group = not dist.is_initialized()
    if owns_group:
        missing = [name for name in _RENDEZVOUS_VARS if name not in os.environ]
        if missing:
            raise SegdeployError(
                f"WORLD_SIZE={world_size} is set but {', '.join(missing)} is not: start "
                "distributed training with torchrun"
            )
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    else:
        backend = dist.get_backend()
    return DistributedContext(rank, world_size, local_rank, backend, owns_group), device


def process_rank() -> int:
    """This process's global rank in a torchrun launch (0 outside one): the rank that prints."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def max_processes(device: str) -> int:
    """The most processes :func:`launch` starts on this machine for ``device``: one GPU each on
    CUDA, at least one CPU core each otherwise (more would only take turns on the cores)."""
    if device.startswith("cuda"):
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return len(cores) if cores else os.cpu_count() or 1


def check_nproc(nproc: int, device: str) -> None:
    """Refuse a number of processes this machine cannot run, in one sentence.

    Raises:
        SegdeployError: ``nproc`` below 1 or above :func:`max_processes`, or asked for inside a
            process torchrun already started.
    """
    if nproc < 1:
        raise SegdeployError(f"--nproc must be at least 1, found {nproc}")
    if nproc > 1 and launched_by_torchrun():
        raise SegdeployError("this process was started by torchrun: leave --nproc out")
    most = max_processes(device)
    if nproc > most:
        what = "GPU" if device.startswith("cuda") else "CPU core"
        raise SegdeployError(
            f"--nproc {nproc} needs a {what} per process for --device {device} and this "
            f"machine has {most}; pass --nproc {max(1, most)} or fewer"
        )


def launch(nproc: int, module: str, args: Sequence[str], device: str = "cpu") -> int:
    """Run ``python -m module *args`` in ``nproc`` processes of one torchrun launch on this
    machine and return the run's exit code.

    torchrun's own launcher runs in this process (``torch.distributed.run.run``, with the
    arguments of ``torchrun --standalone --nproc-per-node nproc -m module``): a rendezvous on
    ``localhost`` with a free port, ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set in every
    process, no restarts. Each process gets ``cores // nproc`` threads unless
    ``OMP_NUM_THREADS`` is set.

    Returns:
        0 when every process succeeded; else the exit code of the first process that failed
        (``128 + n`` for a process ended by signal ``n``), or ``128 + n`` when this process got
        signal ``n`` (Ctrl-C: 130) and stopped every process with it.

    Raises:
        SegdeployError: see :func:`check_nproc`.
    """
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    check_nproc(nproc, device)
    flags = ["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "--module"]
    try:
        with _launcher_state(nproc):
            run(parse_args([*flags, module, *args]))
    except ChildFailedError as failed:
        return _shell_code(failed.get_first_failure()[1].exitcode)
    except SignalException as stopped:
        return 128 + int(stopped.sigval)
    return 0


def _shell_code(exitcode: int) -> int:
    """A process's exit code as a shell reports it: ``128 + n`` when signal ``n`` ended it."""
    return 128 - exitcode if exitcode < 0 else exitcode


# What torchrun's launcher changes in the process that runs it: the signal handlers that make
# it stop the processes on Ctrl-C, and environment variables that its processes inherit.
_LAUNCHER_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
_LAUNCHER_ENV = ("OMP_NUM_THREADS", "TORCHELASTIC_SIGNALS_TO_HANDLE")


@contextlib.contextmanager
def _launcher_state(nproc: int) -> Iterator[None]:
    """Set the processes' thread count, and give back the signal handlers and environment
    variables torchrun's launcher changed in this process when it is done."""
    env = {name: os.environ.get(name) for name in _LAUNCHER_ENV}
    main_thread = threading.current_thread() is threading.main_thread()
    signals = [getattr(signal, name) for name in _LAUNCHER_SIGNALS if hasattr(signal, name)]
    handlers = {sig: signal.getsignal(sig) for sig in signals} if main_thread else {}
    # torchrun's own default is 1 thread (and a warning); a CPU run wants the cores shared out.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, max_processes("cpu") // nproc)))
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
