"""Multi-process launcher that also works without GPUs.

Detectron2 v0.6's ``launch`` asserts CUDA and always uses NCCL, so ``--num-gpus 2`` cannot run on a
CPU machine. On CUDA machines we defer to it unchanged; when CPU processes are asked for
(``--cpu-processes`` or MODEL.DEVICE cpu) we spawn the processes ourselves with a GLOO process group
and set up Detectron2's per-machine ("local") process group the way ``detectron2.utils.comm``
expects, so that ``comm.get_local_rank`` and friends, DDP and distributed evaluation behave as in
GPU training.
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.engine.launch import DEFAULT_TIMEOUT, _find_free_port
from detectron2.utils import comm

__all__ = ["launch", "LaunchError", "DEFAULT_TIMEOUT"]

logger = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """A launch that cannot do what was asked (e.g. GPU processes on a machine without CUDA)."""


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    cpu_processes: bool = False,
) -> None:
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on each of ``num_machines``.

    Same contract as ``detectron2.engine.launch``: with CUDA it *is* that function (NCCL). CPU
    processes joining a GLOO group (``dist_url`` "auto" picks a free localhost port on a single
    machine) only when ``cpu_processes`` asks for them (``--cpu-processes``, MODEL.DEVICE cpu):
    several processes without CUDA otherwise raise :class:`LaunchError`, since ``--num-gpus 8`` on
    a machine without a GPU is a mistake, not a request for 8 CPU processes. A world of one process
    runs ``main_func`` in the calling process.
    """
    world_size = num_machines * num_gpus_per_machine
    if torch.cuda.is_available() and not cpu_processes:
        d2_launch(main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args=tuple(args), timeout=timeout)
        return
    if world_size <= 1:
        main_func(*args)
        return
    if not cpu_processes:
        raise LaunchError(
            f"--num-gpus {num_gpus_per_machine}: no CUDA GPU is available on this machine. To train with "
            f"{num_gpus_per_machine} CPU processes (gloo) instead, add --cpu-processes (or MODEL.DEVICE cpu); "
            "otherwise use --num-gpus 1 or check the CUDA installation (torch.cuda.is_available() is False)"
        )
    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url 'auto' (or none) only works on a single machine; pass tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    logger.info(f"Launching {num_gpus_per_machine} CPU processes per machine (gloo, {dist_url})")
    mp.spawn(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args), timeout),
        daemon=False,
    )


def _set_local_process_group(num_workers_per_machine: int, machine_rank: int) -> None:
    """Detectron2's local (same-machine) group: upstream main has ``create_local_process_group``;
    v0.6 expects the launcher to assign ``comm._LOCAL_PROCESS_GROUP``. ``new_group`` must be called
    by every rank for every group, hence the loop over machines."""
    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(num_workers_per_machine)
        return
    if comm._LOCAL_PROCESS_GROUP is not None:
        raise RuntimeError("Detectron2's local process group is already set in this process")
    num_machines = dist.get_world_size() // num_workers_per_machine
    for i in range(num_machines):
        group = dist.new_group(list(range(i * num_workers_per_machine, (i + 1) * num_workers_per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def _cpu_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_workers_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: Sequence[Any],
    timeout: timedelta,
) -> None:
    global_rank = machine_rank * num_workers_per_machine + local_rank
    # N processes with the default thread count each would oversubscribe the cores N times.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_workers_per_machine))
    try:
        dist.init_process_group(
            backend="gloo", init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout
        )
    except Exception:
        logger.error(f"Process group URL: {dist_url}")
        raise
    _set_local_process_group(num_workers_per_machine, machine_rank)
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
