"""Ingest and index on Ray: a store made on a local 3-worker CPU cluster is byte-identical
to one made by a single process, through a worker killed mid-block, a killed driver resumed with and
without Ray, and a worker failing for good stops in one line with nothing marked complete. Every
store here has three fire rules: the sign, a top:Q rule (its thresholds fixed by block 0,
then handed to the workers, or read back from the ingest state on --resume) and an abs>T rule."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray

import actdb
from actdb.errors import InputError, StoreError
from actdb.ingest.pipeline import ingest
from actdb.ingest.ray_ingest import PAUSE_ENV, check_store_visible
from actdb.settings import IngestSettings, RaySettings
from actdb.store.layout import rule_slug
from stores import interrupted
from tiny import make_corpus

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ACTDB = str(Path(sys.executable).with_name("actdb"))
RULES = ("sign", "top:0.9", "abs>0.05")
OPTS = dict(seq_len=24, batch_size=3, block_tokens=256, capture="resid+ffn", fire_rule=RULES)
CLI_OPTS = ["--seq-len", "24", "--batch-size", "3", "--block-tokens", "256", "--capture", "resid+ffn", "--no-progress",
            *(a for r in RULES for a in ("--fire-rule", r))]
# what differs between a Ray store and a single-process one: the writer's lock, and the manifest's engine
NOT_COMPARED = {".actdb.lock", "manifest.json"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local Ray cluster for the module: 3 CPU workers; its address for the CLI's --ray."""
    ray.init(num_cpus=3, include_dashboard=False, logging_level="error", log_to_driver=False,
             _temp_dir=str(Path("/tmp") / f"ray-actdb-{os.getpid()}"))
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def ref(model_dirs, tmp_path_factory):
    """(model, corpus, single-process store with its index): ~25 blocks of 256 tokens."""
    d = tmp_path_factory.mktemp("ray_ref")
    corpus = make_corpus(d / "c.jsonl", n_docs=200, seed=0)
    mdir = model_dirs("opt")
    ingest(IngestSettings(model=str(mdir), corpus=(str(corpus),), out=str(d / "plain"), progress=False, **OPTS))
    return mdir, corpus, d / "plain"


def settings(mdir: Path, corpus: Path, out: Path, **kw) -> IngestSettings:
    return IngestSettings(model=str(mdir), corpus=(str(corpus),), out=str(out), progress=False, **{**OPTS, **kw})


def files(root: Path, without: str) -> dict[str, bytes]:
    out = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()
           and p.name not in NOT_COMPARED}
    # `without`: a folder of the store's and of every rule's (index/: the sign's and rules/*/index/)
    return {k: p.read_bytes() for k, p in out.items() if not (without and (k.startswith(without)
                                                                              or f"/{without}" in k))}


def assert_same_store(got: Path, ref: Path, engine: str | None = "ray", without: str = "") -> None:
    """Byte for byte: every rule's masks, capture, token parts, tables, checksums, indexes (but
    files under `without`); the manifest equal but for the engine it names."""
    a, b = files(got, without), files(ref, without)
    assert sorted(a) == sorted(b)
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"{len(differ)} files differ, e.g. {differ[:3]}"
    assert any(k.startswith("masks/") for k in a) and any(k.startswith("capture/") for k in a)
    assert without or any(k.startswith("index/") for k in a)
    m_got, m_ref = (json.loads((p / "manifest.json").read_text()) for p in (got, ref))
    assert m_got.pop("extra") == ({"engine": engine} if engine else {})
    m_ref.pop("extra")
    m_got.pop("checksum"), m_ref.pop("checksum")   # of the whole record, extra included
    assert m_got == m_ref
    # every rule's masks and index beside the sign's; the top:Q thresholds recorded per layer
    for r in m_got["fire_rules"][1:]:
        slug = f"rules/{rule_slug(r['name'])}/"
        assert any(k.startswith(slug + "masks/") for k in a) and (without or any(k.startswith(slug + "index/")
                                                                                  for k in a))
    assert [r["name"] for r in m_got["fire_rules"]] == list(RULES)
    top = m_got["fire_rules"][1]["thresholds"]
    assert len(top) == len(m_got["layers"]) and len(set(top)) > 1 and all(t > 0 for t in top)


def wait_for(path: Path, proc: subprocess.Popen | None = None, timeout: float = 240) -> int:
    """The pid a paused worker wrote to `path`."""
    deadline = time.time() + timeout
    while not path.exists():
        assert proc is None or proc.poll() is None, f"ended before the pause: {proc.stdout.read()[-1500:]}"
        assert time.time() < deadline, f"no worker paused at {path.name}"
        time.sleep(0.05)
    return int(path.read_text())


def gone(pid: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"worker {pid} still runs after its driver died")


def test_ray_store_is_byte_identical_and_shares_are_reported(cluster, ref, tmp_path):
    mdir, corpus, plain = ref
    summary = ingest(settings(mdir, corpus, tmp_path / "ray"), RaySettings(ray=cluster, ray_workers=3))
    assert_same_store(tmp_path / "ray", plain)
    shares = [l for l in summary.lines() if l.startswith("worker") and "blocks" in l]
    assert len(shares) == 3, summary.lines()
    n_blocks = -(-summary.n_tokens // 256)
    assert sum(int(l.split(": ")[1].split()[0]) for l in shares) == n_blocks
    assert any("3 Ray workers, 1 CPU thread each" in l for l in summary.lines()) and summary.startup_seconds > 0


def test_worker_killed_mid_block_is_redone(cluster, ref, tmp_path, monkeypatch):
    """SIGKILL to the worker process that has written block 3's masks but not its capture: Ray
    restarts it, the block is redone, and the store equals the uninterrupted one."""
    mdir, corpus, plain = ref
    monkeypatch.setenv(PAUSE_ENV, f"3:{tmp_path}")
    out: dict = {}
    run = threading.Thread(target=lambda: out.update(s=ingest(settings(mdir, corpus, tmp_path / "s", index=False),
                                                                RaySettings(ray=cluster, ray_workers=2))))
    run.start()
    pid = wait_for(tmp_path / "paused-3")
    os.kill(pid, signal.SIGKILL)
    run.join(300)
    assert "s" in out, "the run did not finish after the kill"
    assert_same_store(tmp_path / "s", plain, without="index/")


def test_worker_failing_for_good_stops_in_one_line(cluster, ref, tmp_path):
    """The model folder disappears from the worker's node and its process dies in block 2: the
    restarted worker cannot load the model, and `actdb ingest` stops with one line naming worker and
    block; nothing is marked complete."""
    mdir, corpus, _ = ref
    model = tmp_path / "model"
    shutil.copytree(mdir, model)
    store = tmp_path / "s"
    proc = subprocess.Popen([ACTDB, "ingest", str(model), str(corpus), "-o", str(store), *CLI_OPTS, "--no-index",
                             "--ray", cluster, "--ray-workers", "2"], env={**os.environ, PAUSE_ENV: f"2:{tmp_path}"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = wait_for(tmp_path / "paused-2", proc)
    model.rename(tmp_path / "elsewhere")
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-3000:]
    # the block it was in, or the next one queued on it; the worker's own reason: no model config
    assert re.fullmatch(r"Error: .*: Ray worker \d \(.*pid \d+\) failed on block \d+ \(tokens .*\): cannot start: "
                        r".*cannot read the model config.*; the store is not complete; .*", lines[0]), lines[0]
    assert not (store / "manifest.json").exists()
    state = json.loads((store / "ingest-state.json").read_text())
    assert state["blocks_done"] <= 2
    with pytest.raises(StoreError, match="not finished"):
        actdb.open(store)


def test_driver_killed_then_resume_with_and_without_ray(cluster, ref, tmp_path):
    """The CLI driver killed twice (SIGKILL while a worker pauses in block 4, then in block 12 of the
    resumed run), resumed on Ray and then in one process; then `actdb index --ray`: the store equals
    the single-process one."""
    mdir, corpus, plain = ref
    store = tmp_path / "s"
    cmd = [ACTDB, "ingest", str(mdir), str(corpus), "-o", str(store), *CLI_OPTS, "--no-index"]
    for block, extra in ((4, []), (12, ["--resume"])):
        env = {**os.environ, PAUSE_ENV: f"{block}:{tmp_path}"}
        proc = subprocess.Popen([*cmd, *extra, "--ray", cluster, "--ray-workers", "2"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        pid = wait_for(tmp_path / f"paused-{block}", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        gone(pid)   # Ray ends the workers of a dead driver: nothing writes behind the resumed run
        assert not (store / "manifest.json").exists()
    done = json.loads((store / "ingest-state.json").read_text())["blocks_done"]
    assert 0 < done <= 12
    plain_resume = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert plain_resume.returncode == 0, plain_resume.stderr[-1500:]
    assert f"resumed at token {done * 256:,}" in plain_resume.stdout
    indexed = subprocess.run([ACTDB, "index", str(store), "--ray", cluster, "--no-progress"],
                             capture_output=True, text=True)
    assert indexed.returncode == 0, indexed.stderr[-1500:]
    assert_same_store(store, plain, engine=None)   # the last run, which wrote the manifest, was plain


def test_neuron_rules_on_ray_are_byte_identical_and_resume(cluster, model_dirs, tmp_path, monkeypatch):
    """ntop:Q (per-neuron thresholds fixed by block 0 on one worker, written and committed by the
    driver with block 0, handed to the other workers) and glu:SS on a gated model: the Ray store equals
    the single process's byte for byte, its thresholds file included; a single-process ingest killed
    after block 2 resumes on Ray from the thresholds file the state records."""
    corpus = make_corpus(tmp_path / "c.jsonl", n_docs=60, seed=0)
    mdir = model_dirs("llama")
    kw = {"fire_rule": ("sign", "ntop:0.9", "glu:+-", "glu:--"), "index": False}
    ingest(settings(mdir, corpus, tmp_path / "plain", **kw))
    ingest(settings(mdir, corpus, tmp_path / "ray", **kw), RaySettings(ray=cluster, ray_workers=3))
    interrupted(lambda: ingest(settings(mdir, corpus, tmp_path / "resumed", **kw)), monkeypatch, after_blocks=2)
    assert json.loads((tmp_path / "resumed" / "ingest-state.json").read_text())["thresholds"]["ntop:0.9"]
    ingest(settings(mdir, corpus, tmp_path / "resumed", resume=True, **kw), RaySettings(ray=cluster, ray_workers=2))
    for got in ("ray", "resumed"):
        a, b = files(tmp_path / got, ""), files(tmp_path / "plain", "")
        assert sorted(a) == sorted(b) and "rules/ntop-0.9/thresholds.parquet" in a and len(a) > 100
        assert [k for k in a if a[k] != b[k]] == [], got
        m_got, m_ref = (json.loads((tmp_path / p / "manifest.json").read_text()) for p in (got, "plain"))
        for m in (m_got, m_ref):
            m.pop("extra"), m.pop("checksum")
        assert m_got == m_ref


def test_without_ray_installed_the_flag_says_how_to_install_it(ref, tmp_path):
    mdir, corpus, _ = ref
    code = ("import sys; sys.modules['ray'] = None\n"   # `import ray` raises ImportError
            "from actdb.cli import main; main()")
    r = subprocess.run([sys.executable, "-c", code, "ingest", str(mdir), str(corpus), "-o", str(tmp_path / "s"),
                        "--ray"], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["Error: --ray: Ray is not installed; install it with "
                                             "pip install 'actdb[ray]'"]
    assert not (tmp_path / "s").exists()


def test_a_worker_that_cannot_see_the_store_is_named(tmp_path):
    (tmp_path / "_staging").mkdir()
    with pytest.raises(StoreError, match="Ray worker 1 .* cannot see the store folder .*every Ray worker sees"):
        check_store_visible(tmp_path, "a" * 32, "Ray worker 1 (node-b, pid 7)")
    (tmp_path / "_staging" / "ray-probe").write_text("b" * 32)   # another folder of the same name
    with pytest.raises(StoreError, match="expected the driver's aaaaaaaa"):
        check_store_visible(tmp_path, "a" * 32, "Ray worker 1 (node-b, pid 7)")
    (tmp_path / "_staging" / "ray-probe").write_text("a" * 32)
    check_store_visible(tmp_path, "a" * 32, "Ray worker 1 (node-b, pid 7)")


def test_ray_options_without_ray_are_refused():
    with pytest.raises(InputError, match="expected them with --ray"):
        RaySettings(ray_workers=2)
    with pytest.raises(InputError, match="--ray-workers: expected"):
        RaySettings(ray="auto", ray_workers=-1)
