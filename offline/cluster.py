"""Dask workers for the offline evaluations: a LocalCluster on loopback, or an existing cluster.

Each evaluation trains a network, so a worker runs one at a time (one thread) and the torch
threads of the machine are shared between the workers. We create and close our own Client:
letting SMAC start its own cluster leaves it hanging for a minute at exit.

Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (`distributed.nanny.
pre-spawn-environ`): glibc then hands freed memory back at once, and a training step, which
frees and reallocates its activations, took about 2.5 times as long (measured in process with
and without it). The LocalCluster's workers start without it (NO_MALLOC_TRIM).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dask
from dask.distributed import Client, LocalCluster, as_completed

logger = logging.getLogger(__name__)

NO_MALLOC_TRIM = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


@contextmanager
def dask_client(scheduler: str | None = None, workers: int = 2) -> Iterator[Client]:
    """A Client of the cluster at `scheduler`, or of a new `workers`-process LocalCluster."""
    if scheduler:
        client = Client(scheduler)
        logger.info("using the Dask cluster at %s (%d workers)", scheduler,
                    len(client.scheduler_info()["workers"]))
        try:
            yield client
        finally:
            client.close()
        return
    with dask.config.set(NO_MALLOC_TRIM):  # also for a worker the nanny restarts
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, host="127.0.0.1",
                               processes=True, dashboard_address="127.0.0.1:0")
        client = Client(cluster)
        logger.info("local Dask cluster on 127.0.0.1 with %d workers", workers)
        try:
            yield client
        finally:
            client.close()
            cluster.close()


def threads_per_task(client: Client) -> int:
    """Torch threads one evaluation may use: the cores of a worker's machine per worker on it."""
    cores = client.run(os.cpu_count)  # asked of each worker: remote machines differ
    workers = client.scheduler_info()["workers"]
    per_host: dict[str, list[int]] = {}
    for address, worker in workers.items():
        per_host.setdefault(worker["host"], []).append(cores.get(address) or 1)
    return max(1, min((min(counts) // len(counts) for counts in per_host.values()), default=1))


def run_all(client: Client, function: Callable[..., Any], calls: Sequence[dict[str, Any]],
            on_result: Callable[[int, Any], None]) -> None:
    """Submit `function(**call)` for every call; `on_result(index, result)` as each finishes."""
    futures = {client.submit(function, pure=False, **call): index
               for index, call in enumerate(calls)}
    for future in as_completed(futures):
        on_result(futures[future], future.result())
