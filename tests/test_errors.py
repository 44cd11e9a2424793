"""actdb's errors: one home (actdb/errors.py), each also the built-in error it is a kind of, and
each printed by the CLI as one line."""
import ast
import inspect
from pathlib import Path

import pytest
from click.testing import CliRunner

from actdb import errors
from actdb.cli import main

ROOT = Path(errors.__file__).parent
CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
# control flow, not errors: they never reach a user
NOT_ERRORS = {"StopForward", "_Stop", "_Interrupted"}


def test_every_error_is_an_actdb_error_and_a_builtin_error():
    assert errors.ActdbError.__bases__ == (Exception,)
    for cls in CLASSES:
        if cls is errors.ActdbError:
            continue
        assert issubclass(cls, errors.ActdbError), cls
        builtin = [b for b in cls.__mro__ if b.__module__ == "builtins" and b not in (Exception, BaseException, object)]
        assert builtin, f"{cls.__name__}: subclasses no built-in error but Exception"


def test_the_builtin_each_error_is():
    # what a Python caller may catch
    assert issubclass(errors.InputError, ValueError)
    assert issubclass(errors.QueryTimeout, TimeoutError) and issubclass(errors.QueryTimeout, errors.InputError)
    assert issubclass(errors.CheckTimeout, TimeoutError) and issubclass(errors.CheckTimeout, errors.StoreError)
    assert issubclass(errors.QueryMemory, MemoryError) and issubclass(errors.QueryMemory, errors.InputError)
    assert issubclass(errors.NotFound, LookupError)
    # a damaged store is no OSError: ingest's and the index's `except OSError` would call it a failed write
    assert not issubclass(errors.StoreError, OSError) and issubclass(errors.StoreError, RuntimeError)


def test_error_classes_live_in_errors_py():
    """No exception class is defined elsewhere in actdb (but control flow that never reaches a user)."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "errors.py" and path.parent == ROOT:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name not in NOT_ERRORS:
                bases = [ast.unparse(b).rpartition(".")[2] for b in node.bases]
                if any(b.endswith(("Error", "Exception", "Timeout")) or b in ("NotFound", "QueryMemory")
                       for b in bases):
                    found.append(f"{path.relative_to(ROOT.parent)}: {node.name}({', '.join(bases)})")
    assert not found, found


def test_old_names_still_import():
    from actdb.query.connection import QueryMemory, QueryTimeout
    from actdb.serve.pages import NotFound
    from actdb.store.parquet_guard import CheckTimeout

    assert (QueryMemory, QueryTimeout, NotFound, CheckTimeout) == (
        errors.QueryMemory, errors.QueryTimeout, errors.NotFound, errors.CheckTimeout)


@pytest.mark.parametrize("cls", [c for c in CLASSES if c is not errors.CheckTimeout], ids=lambda c: c.__name__)
def test_the_cli_prints_each_error_as_one_line(cls, monkeypatch, tmp_path):
    """Also the OSError kinds (the timeouts): their message, not the CLI's "PATH: reason" of an OSError."""
    def refuse(*a, **kw):
        raise cls("store x: what went wrong")

    monkeypatch.setattr("actdb.query.handle.open", refuse)
    r = CliRunner().invoke(main, ["info", str(tmp_path)])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == ["Error: store x: what went wrong"], r.output


def test_the_cli_prints_a_check_timeout_as_one_line(monkeypatch, tmp_path):
    def refuse(*a, **kw):
        raise errors.CheckTimeout(3)

    monkeypatch.setattr("actdb.query.handle.open", refuse)
    r = CliRunner().invoke(main, ["info", str(tmp_path)])
    assert r.output.strip().splitlines() == ["Error: the file checks ran past their deadline (3 files checked)"]


def test_a_query_cut_off_while_writing_a_file_is_not_a_write_error(tmp_path):
    """QueryTimeout is an OSError (a TimeoutError): emit's `except OSError` for the file must let it pass."""
    from actdb.query.output import emit

    class Answer:
        schema = None

        def __iter__(self):
            raise errors.QueryTimeout("query interrupted after 1 s (--timeout)")
            yield

    out = tmp_path / "a.csv"
    with pytest.raises(errors.QueryTimeout, match="interrupted after 1 s"):
        emit(Answer(), "csv", str(out), print)
    assert not out.exists() and not list(tmp_path.iterdir())   # no file, no temporary
