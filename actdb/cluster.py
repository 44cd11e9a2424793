"""The Ray cluster behind `--ray` (docs/scale-out.md): connecting, sizing the workers, and Ray's errors
as one line. Shared by the ingest (ingest/ray_ingest.py) and the index (index/ray_index.py);
Ray itself is an optional extra, imported only here and only when asked for."""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any, Iterator

from .errors import ActdbError, InputError
from .settings import RaySettings

INSTALL_HINT = "pip install 'actdb[ray]'"
# how often Ray restarts a killed worker actor (and retries its block) before the run stops
MAX_RESTARTS = 3
# seconds a cluster ADDRESS has to accept a TCP connection: ray.init waits minutes on a dead one
CONNECT_TIMEOUT = 10.0


def import_ray() -> Any:
    """The `ray` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(f"--ray: Ray is not installed; install it with {INSTALL_HINT}") from None
    return ray


@contextlib.contextmanager
def connected(rs: RaySettings) -> Iterator[Any]:
    """Connected to the cluster of `--ray` for the duration; a connection made here is closed at the
    end (a local cluster started by it stops), one the caller made is left open."""
    ray = import_ray()
    mine = not ray.is_initialized()
    if mine:
        address = None if rs.ray == "auto" else rs.ray
        if address is not None:
            check_reachable(address)
        try:
            # worker logs stay in Ray's log folder: the CLI prints one progress bar and one summary
            ray.init(address=address, logging_level="error", log_to_driver=False)
        except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, ValueError, RuntimeError...
            raise InputError(f"--ray {rs.ray}: cannot connect to the Ray cluster: {first_line(str(e))}") from None
    try:
        yield ray
    finally:
        if mine:
            ray.shutdown()


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Refuse, in one line, a cluster address (host:port, or ray://host:port) where nothing accepts
    a TCP connection within `timeout` seconds. Anything else (a name Ray knows, like 'local') is
    Ray's to judge."""
    import socket

    hostport = address.split("://", 1)[1] if "://" in address else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return
    host = host.strip("[]")   # an IPv6 address in brackets
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise InputError(f"--ray {address}: nothing answers at {host}:{port} ({why}); expected the address of a "
                         f"running Ray cluster (`ray start --head` prints it)") from None


@dataclass(frozen=True)
class Shape:
    """How many workers and what each holds."""
    workers: int
    cpus: float     # Ray CPUs per worker (fractional when there are more workers than CPUs)
    gpus: float
    threads: int    # torch threads per worker

    def describe(self) -> str:
        what = f"{self.gpus:g} GPU" if self.gpus else f"{self.threads} CPU thread{'s' * (self.threads > 1)}"
        return f"{self.workers} Ray worker{'s' * (self.workers > 1)}, {what} each"


def worker_shape(ray: Any, rs: RaySettings) -> Shape:
    """--ray-workers and --gpus-per-worker against what the cluster has."""
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    if rs.gpus_per_worker:
        n = rs.ray_workers or int(gpus // rs.gpus_per_worker)
        if n < 1 or n * rs.gpus_per_worker > gpus:
            raise InputError(f"--gpus-per-worker {rs.gpus_per_worker:g}: expected a cluster with at least "
                             f"{max(n, 1) * rs.gpus_per_worker:g} GPUs, got {gpus:g}")
    else:
        n = rs.ray_workers or max(1, int(cpus))
    each = max(cpus / n, 0.01) if not rs.gpus_per_worker else min(1.0, cpus / n)
    return Shape(n, each, float(rs.gpus_per_worker), max(1, int(cpus // n)))


def first_line(text: str) -> str:
    lines = [l.strip() for l in _ANSI.sub("", text).splitlines() if l.strip()]
    return lines[0] if lines else text


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def failure(e: BaseException) -> str:
    """What went wrong in a worker, in one line: the worker's own exception where Ray carries one
    (a task's error, or the error of a worker's constructor), else Ray's first line."""
    cause = getattr(e, "cause", None)   # RayTaskError: the exception the task raised
    if cause is not None:
        text = first_line(str(cause))
        return text if isinstance(cause, ActdbError) else f"{type(cause).__name__}: {text}"
    lines = [l.strip() for l in _ANSI.sub("", str(e)).splitlines() if l.strip()]
    if not lines:
        return type(e).__name__
    if "creation task" in lines[0]:   # a constructor that raised: its exception is the last line
        return f"cannot start: {lines[-1]}"
    return lines[0]
