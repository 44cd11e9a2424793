"""Crash tests' helpers: run an actdb command that kills itself at a chosen fault point
(actdb.faults), and read which points an uninterrupted run reached."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from actdb import faults


def run_to_fault(cmd: list[str], fault: str | None = None, trace: Path | None = None,
                 **kw) -> subprocess.CompletedProcess:
    """Run `cmd`, killed with SIGKILL at fault point `fault` ("NAME:N"), tracing the points it
    reaches to `trace`."""
    env = {k: v for k, v in os.environ.items() if k not in (faults.FAULT_ENV, faults.TRACE_ENV)}
    if fault:
        env[faults.FAULT_ENV] = fault
    if trace:
        env[faults.TRACE_ENV] = str(trace)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)


def traced_points(trace: Path, before: str | None = None) -> list[tuple[str, str]]:
    """(fault "NAME:N", detail) of each point a traced run reached, in order: N counts the times
    NAME was reached. before: stop at the first point whose detail is that (a file name)."""
    seen: dict[str, int] = {}
    out = []
    for line in Path(trace).read_text().splitlines():
        name, _, detail = line.partition(" ")
        if before is not None and detail == before:
            break
        seen[name] = seen.get(name, 0) + 1
        out.append((f"{name}:{seen[name]}", detail))
    return out
