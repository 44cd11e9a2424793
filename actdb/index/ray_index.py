"""The index's (layer, neuron chunk) units as Ray tasks (`actdb index --ray`, docs/scale-out.md).

Each task counts one unit over all tokens and writes its parts under the index folder of the
shared store (build.build_unit, the same function the threads of a local build run); the driver
records each finished unit, assembles the tables and writes index.json last, as a local build
does, so the files are the same. A task whose worker dies is retried by Ray; one that raises
stops the build with one line, and a rerun redoes only the units not recorded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..cluster import MAX_RESTARTS, connected, failure
from ..errors import StoreError
from ..settings import RaySettings


def _unit_task(build_unit: Callable, store_path: str, rule: str, root: str, unit: tuple[int, int, int],
               ngram: bool, config: Any, vocab: Any, tok: Any) -> str:
    from ..store.reader import StoreReader

    return build_unit(StoreReader(store_path, rule=rule), tok, Path(root), unit, ngram, config, vocab)


def run_units_on_ray(rs: RaySettings, store_path: Path, rule: str, root: Path, units: list,
                     ngram_layers: tuple[int, ...], config: Any, vocab: Any, tok: Any,
                     finished: Callable[[str], None], build_unit: Callable) -> None:
    """Run every unit of `rule`'s index as a Ray task, at most --ray-workers (default: the
    cluster's CPUs) at once; finished(name) in this thread as each completes."""
    with connected(rs) as ray:
        n = rs.ray_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        task = ray.remote(_unit_task).options(num_cpus=1, max_retries=MAX_RESTARTS)
        shared = [ray.put(x) for x in (config, vocab, tok)]   # once, not once per task
        queue = list(reversed(units))
        inflight: dict[Any, tuple[int, int, int]] = {}

        def submit() -> None:
            if queue:
                u = queue.pop()
                inflight[task.remote(build_unit, str(store_path), rule, str(root), u, u[0] in ngram_layers,
                                     *shared)] = u
        for _ in range(n):
            submit()
        try:
            while inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1)
                layer, n0, n1 = inflight.pop(ready[0])
                try:
                    name = ray.get(ready[0])
                except Exception as e:  # noqa: BLE001 - one line; finished units stay recorded
                    raise StoreError(f"{store_path}: index unit layer {layer} neurons {n0}..{n1 - 1} (rule "
                                     f"{rule}) failed on Ray: {failure(e)}; the index is not complete, "
                                     f"`actdb index` finishes it") from None
                finished(name)
                submit()
        finally:
            for ref in inflight:
                ray.cancel(ref, force=True)
