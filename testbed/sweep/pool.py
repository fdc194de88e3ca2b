"""Where a sweep's trials run, each in its own process (trial.py): ``POOLS`` by the name a
backend declares (testbed/backends.py).

- ``ray``: each trial a Ray task with the spec's resources (fractional CPUs, GPUs where the
  cluster has them). A local Ray sized to this machine by default; ``address`` joins an
  existing cluster (``ray start``, KubeRay). Ray's CPUs are logical: they say how many
  trials run at once; the caps of a local-fleet trial stay cgroups.
- ``here``: one trial after another from this machine, without Ray (a backend whose
  processes run elsewhere, a cluster; and ``testbed run --sweep-bandwidth``, whose trials
  run one after another as a run's arms do)."""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable, Iterable

from ..errors import TestbedError
from .trial import execute

OBJECT_STORE_BYTES = 200 * 1024 ** 2  # results are small dicts: keep Ray's store (shared memory) small
CANCEL_WAIT_S = 60.0


class RayError(TestbedError, RuntimeError):
    """Ray could not be started or joined; the message says why (the run failed: exit 1,
    whether a local Ray could not start or a cluster could not be reached)."""


def start_ray(address: str | None, cpus: float | None) -> dict:
    """Join ``address`` or start a local Ray with ``cpus`` (default: this machine's cores);
    what it offers (for the terminal and sweep.json)."""
    import ray

    try:
        if address:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        else:
            ray.init(num_cpus=int(cpus) if cpus else (os.cpu_count() or 1), include_dashboard=False,
                     logging_level=logging.ERROR, log_to_driver=False,
                     object_store_memory=OBJECT_STORE_BYTES)
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError: say what Ray said, in one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RayError(f"cannot {'join the Ray cluster at ' + address if address else 'start a local Ray'}: "
                       f"{first}") from None
    resources = ray.cluster_resources()
    return {"address": address or "local", "cpus": resources.get("CPU", 0), "gpus": resources.get("GPU", 0),
            "nodes": len(ray.nodes())}


def stop_ray() -> None:
    ray = sys.modules.get("ray")  # never imported (the trials ran here): nothing to stop
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def run_here(jobs: Iterable[tuple[object, dict, str]], *, cpus: float, gpus: float, timeout_s: float | None,
             on_done: Callable[[object, dict], None]) -> None:
    """Every ``(key, settings, trial_dir)`` one after another (``cpus`` and ``gpus`` are the
    trial's own business here); Ctrl-C stops the running trial's process and is raised again."""
    for key, settings, trial_dir in jobs:
        on_done(key, execute(settings, trial_dir, timeout_s))


def run_on_ray(jobs: Iterable[tuple[object, dict, str]], *, cpus: float, gpus: float, timeout_s: float | None,
               on_done: Callable[[object, dict], None]) -> None:
    """Submit every ``(key, settings, trial_dir)`` as a Ray task, and call ``on_done(key,
    result)`` as each finishes (in the order they finish). A task that Ray itself loses (its
    worker died) is a failed result, not an exception. Ctrl-C cancels every task (each
    stops its trial's process, which cleans up) and is raised again."""
    import ray

    task = ray.remote(execute).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    pending = {task.remote(settings, trial_dir, timeout_s): key for key, settings, trial_dir in jobs}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                key = pending.pop(ref)
                on_done(key, _result(ref))
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while pending and time.monotonic() < deadline:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=1.0)
            for ref in done:
                pending.pop(ref)
        raise


def _result(ref) -> dict:
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:  # the worker died, the task was cancelled, a node was lost
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return {"status": "failed", "error": f"Ray lost the trial: {type(exc).__name__}: {first}",
                "seconds": None, "summary": None}


POOLS = {"ray": run_on_ray, "here": run_here}
