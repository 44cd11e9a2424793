"""The suite's own shape: shared fixtures live in conftest.py and shared helpers in modules that
are not test modules, so no file under tests/ imports a test module (a fixture imported from one
is a second fixture of its own scope: a session store built again for each importing module)."""
from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in `path`, imports inside functions counted."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def test_no_file_imports_a_test_module():
    found = [f"{p.name}:{line}: imports {mod}" for p in sorted(TESTS.glob("*.py"))
             for line, mod in imported_modules(p) if mod.split(".")[0].startswith("test_")]
    assert not found, "shared fixtures go in conftest.py, shared helpers in a module not named test_*: " \
                      + "; ".join(found)


def test_the_check_sees_imports_anywhere(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import os\nfrom test_a import b\ndef f():\n    import test_c.d\n    from . import test_e\n")
    assert [m for _, m in imported_modules(f)] == ["os", "test_a", "test_c.d"]
