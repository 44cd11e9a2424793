"""Where the work runs: the one reading of a --device setting, for ingest, the index and the probe."""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:   # torch is imported only when a device is chosen: `actdb sql` never needs it
    import torch


# How long GNU OpenMP's workers (torch's on Linux) spin after a parallel region before they sleep. Its
# default (300,000 spins) held a core through a whole 60 ms hook on these VMs, so the capture
# statistics' second thread and the mask writer only shared the other core.
# 10,000 spins still bridge the gaps between a forward's ops (benchmarks/RESULTS.md, "Ingest overhead,
# third pass").
OPENMP_SPIN = "10000"


def quiet_openmp() -> None:
    """Set GOMP_SPINCOUNT to OPENMP_SPIN for this process and its children, unless the user set
    it or OMP_WAIT_POLICY, or torch (whose OpenMP runtime reads it once, when it loads) is
    loaded already."""
    if "torch" in sys.modules or "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN


# glibc malloc's thresholds for the forward loop (devices.steady_malloc), in MiB. By default glibc serves
# blocks over a threshold it moves at run time with mmap, and gives a heap's free top back to the system:
# a SmolLM2 forward of 2,048 tokens then took 290,000-365,000 page faults in some processes and ~1,000 in
# others, and ran 10-20 % slower in the first (benchmarks/RESULTS.md, "Ingest overhead, fourth pass").
# Fixed thresholds above a layer's activations reuse the same memory every batch.
MALLOC_MMAP_MIB = 64
MALLOC_TRIM_MIB = 256


def steady_malloc() -> bool:
    """Fix glibc malloc's mmap and trim thresholds (MALLOC_MMAP_MIB, MALLOC_TRIM_MIB) for this process,
    unless the user set either (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, or in GLIBC_TUNABLES) or
    this is not glibc. Called where the forward loop starts; returns whether it set them."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if sys.platform != "linux" or "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ \
            or "malloc.mmap_threshold" in tunables or "malloc.trim_threshold" in tunables:
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):   # no mallopt: not glibc (musl)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3   # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, MALLOC_MMAP_MIB << 20)) and bool(mallopt(m_trim_threshold, MALLOC_TRIM_MIB << 20))


def choose_device(setting: str) -> "torch.device":
    """'auto' (cuda if available, else cpu) or a torch device name (cpu, cuda, cuda:1, ...)."""
    import torch

    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(setting)
    except RuntimeError:
        raise InputError(f"--device: expected auto, cpu or cuda[:N], got {setting!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {setting}: no CUDA device is available here")
    return dev


def device_name(setting: str) -> str:
    """A --device setting -> a torch device name; "cpu" needs no torch."""
    return setting if setting == "cpu" else str(choose_device(setting))


def resolve_workers(workers: int) -> int:
    """0 -> the cores this process may use; otherwise the number given (at least 1)."""
    if workers < 0:
        raise InputError(f"workers: expected 0 (one per core) or a positive number, got {workers}")
    if workers:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # not on Linux
        return max(1, os.cpu_count() or 1)
