"""Build hook: the saved queries ship inside the wheel.

queries/ at the top of the checkout stays their one source; building copies its .sql files
into the package as actdb/query/saved/, where actdb.query.catalogue finds them once
installed. Everything else about the project is in pyproject.toml.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

QUERIES = Path(__file__).resolve().parent / "queries"


class BuildPyWithQueries(build_py):
    def run(self) -> None:
        super().run()
        dest = Path(self.build_lib) / "actdb" / "query" / "saved"
        files = sorted(QUERIES.glob("*.sql"))
        if not files:
            raise SystemExit(f"{QUERIES}: no saved queries to ship")
        self.mkpath(str(dest))
        for f in files:
            self.copy_file(str(f), str(dest / f.name))


setup(cmdclass={"build_py": BuildPyWithQueries})
