"""`pip install .` (not editable) gives a working actdb: the wheel carries every
saved query, and an installed copy runs `actdb query`, `actdb plot` and `actdb report` from
outside the checkout."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from actdb.index.build import build_index
from stores import make_known

pytestmark = pytest.mark.slow   # builds a wheel and installs it into a fresh venv

ROOT = Path(__file__).resolve().parent.parent


def _copy_source(dest: Path) -> Path:
    """The checkout's tracked and untracked-but-not-ignored files, so a stale build/ or an
    editable install's leftovers never reach the wheel."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = _copy_source(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheel")
    # no build isolation: setuptools comes from this environment, so the test runs offline
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("actdb-*.whl")
    return whl


def test_wheel_carries_every_saved_query(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = sorted(p.name for p in (ROOT / "queries").glob("*.sql"))
    assert sources
    for name in sources:
        assert f"actdb/query/saved/{name}" in names, name
        assert zipfile.ZipFile(wheel).read(f"actdb/query/saved/{name}") == (ROOT / "queries" / name).read_bytes()
    assert "actdb/cli.py" in names and "actdb/query/catalogue.py" in names


def test_wheel_carries_the_explorer_files(wheel):
    """actdb serve's templates and static files are package data: an installed copy has them."""
    names = set(zipfile.ZipFile(wheel).namelist())
    serve = ROOT / "actdb" / "serve"
    files = sorted(p.relative_to(ROOT).as_posix() for p in [*serve.glob("templates/*"), *serve.glob("static/*")])
    assert any(f.endswith(".html") for f in files) and any(f.endswith(".js") for f in files)
    missing = [f for f in files if f not in names]
    assert not missing, missing


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed. Its dependencies come from this
    environment's site-packages, added by a .pth line: a plain path line does not run that
    folder's own .pth files, so the editable actdb of this environment is not imported."""
    env = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=300)
    py = env / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "_deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([py, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
                       capture_output=True, text=True, timeout=600, env=_clean_env())
    assert r.returncode == 0, r.stdout + r.stderr
    return env


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["MPLBACKEND"] = "Agg"
    return env


@pytest.fixture(scope="module")
def known(tmp_path_factory) -> Path:
    p = make_known(tmp_path_factory.mktemp("wheelstore") / "store")
    build_index(p, progress=False)
    return p


def test_installed_copy_runs_saved_queries_plot_and_report(venv, known, tmp_path):
    env = _clean_env()

    def run(*args) -> str:
        r = subprocess.run([str(a) for a in args], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    where = run(venv / "bin" / "python", "-c", "import actdb, actdb.query.catalogue as c; "
                "print(actdb.__file__); print(c.QUERIES_DIR)").splitlines()
    assert Path(where[0]).is_relative_to(venv), where
    assert Path(where[1]).is_relative_to(venv) and Path(where[1]).name == "saved", where
    actdb_bin = venv / "bin" / "actdb"
    assert "dead_per_layer" in run(actdb_bin, "query", "--list")
    out = run(actdb_bin, "query", known, "dead_per_layer", "-f", "csv").splitlines()
    assert out[0] == "layer,n_neurons,n_dead,dead_pct" and len(out) == 4
    assert "$max_cov = index_info.tok_max_cov" in run(actdb_bin, "query", "token_detectors_per_layer", "--describe")
    assert "wrote" in run(actdb_bin, "plot", known, "fig1a", "-o", tmp_path / "fig1a.png")
    assert (tmp_path / "fig1a.png").stat().st_size > 1000
    run(actdb_bin, "report", known, "-o", tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "dead_per_layer" in report or "Dead" in report
