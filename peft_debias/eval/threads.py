"""CPU thread count of an evaluation: torch's intra-op threads and numpy's BLAS pool, set together.

Without ``--threads`` the count is :func:`default_threads`: the CPUs this process may use, minus one, at least one.
Measured on a 2-core machine shared with other jobs, torch's own default (one thread per core) made
``peft-debias eval`` about twice as slow as one thread: two threads contend with the other jobs and with each
other for the two cores, while one thread runs its matrix products near the core's peak. On larger machines one
core is left for the rest of the system.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(cpus: int | None = None) -> int:
    """The thread count used when none is given: ``cpus - 1`` (``cpus`` default :func:`available_cpus`), at least 1."""
    return max(1, (available_cpus() if cpus is None else cpus) - 1)


def use_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads and numpy's BLAS threads to ``threads`` (None: :func:`default_threads`).

    Returns the count set. The BLAS limit goes through ``threadpoolctl`` when it is installed and stays in force
    for the rest of the process.
    """
    import torch

    count = default_threads() if threads is None else max(1, int(threads))
    torch.set_num_threads(count)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with the evaluation extras
        logger.info("threadpoolctl is not installed: numpy's BLAS threads are left as they are")
    else:
        threadpool_limits(limits=count, user_api="blas")
    logger.info("using %d CPU thread(s)", count)
    return count
