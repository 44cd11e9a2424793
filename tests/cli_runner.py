"""The CLI run in this process through click's CliRunner (a helper, not tests): exit code and
output, never a traceback; and the one error line of a refusal."""
from __future__ import annotations

from click.testing import CliRunner

from actdb.cli import main


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    out = result.output
    assert "Traceback" not in out, out
    return result.exit_code, out.strip()


def ingest(model, *corpus, out, extra=()):
    return run("ingest", model, *corpus, "-o", out, "--seq-len", "16", "--no-progress", *extra)


def one_error_line(out: str) -> str:
    lines = [l for l in out.splitlines() if l.startswith("Error:")]
    assert len(lines) == 1, out
    return lines[0]
