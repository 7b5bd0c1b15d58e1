"""Thread counts chosen on purpose. These tools run beside other programs: on a busy 2-core
machine torch's default (one intra-op thread per core) made training 13-15x slower and a long
``detect`` 14x slower, because its threads spin waiting for cores another process holds.

* ``stream`` (detect, eval-stream, the ONNX runtime): one thread. A frame is a few small ops;
  more threads cost more than they save, and the audio thread keeps a core.
* ``batch`` (train, eval, analyze): the cores that are free now (all cores minus the load
  measured over a quarter of a second), at least one.

``--threads N`` overrides either. torch is configured only if it is already imported, else through
``OMP_NUM_THREADS`` for when it is, so an ONNX-only command never imports it.
"""

from __future__ import annotations

import os
import sys
import time

ROLES = ("stream", "batch")


def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total


def free_cores(interval: float = 0.25) -> int:
    """Cores not busy with other work right now (Linux: measured from /proc/stat; elsewhere
    every core), at least one."""
    cores = available_cores()
    try:
        busy0, total0 = _cpu_times()
        time.sleep(interval)
        busy1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return cores
    if total1 <= total0:
        return cores
    all_cpus = os.cpu_count() or cores
    busy = (busy1 - busy0) / (total1 - total0) * all_cpus
    return max(1, min(cores, cores - int(busy + 0.3)))


def configure_threads(requested: int | None, role: str) -> int:
    """Set the intra-op thread count for ``role`` (or ``requested`` when > 0); returns it."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    if requested:
        threads = requested
    elif role == "stream":
        threads = 1
    else:
        threads = free_cores()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    return threads
