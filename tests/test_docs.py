"""The documents: the settings tables in docs/ are generated from actdb/settings.py and must match
it; the README stays a short front page whose links resolve."""
import re
from pathlib import Path

import pytest

from actdb.settings import IndexSettings, IngestSettings, QuerySettings, RaySettings, ServeSettings, settings_table

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("doc, marker, cls", [("ingest.md", "settings-table", IngestSettings),
                                              ("query.md", "index-settings-table", IndexSettings),
                                              ("scale-out.md", "ray-settings-table", RaySettings),
                                              ("query.md", "query-settings-table", QuerySettings),
                                              ("explorer.md", "serve-settings-table", ServeSettings)])
def test_settings_table_is_current(doc, marker, cls):
    text = (ROOT / "docs" / doc).read_text()
    start = text.index(f"<!-- {marker} -->") + len(f"<!-- {marker} -->")
    end = text.index(f"<!-- /{marker} -->")
    assert text[start:end].strip() == settings_table(cls), f"regenerate with actdb.settings.settings_table({cls.__name__})"


def test_readme_is_a_short_front_page_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link
    for doc in (ROOT / "docs").glob("*.md"):
        for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / link).exists(), f"{doc.name}: {link}"


def test_documents_cite_no_spec_section_or_issue_number():
    """The words a user reads (documents, help text, code comments, tests, benchmarks) say what
    actdb does in its own terms: they cite docs/, never a specification section or an issue
    number the user does not have."""
    pattern = re.compile(r"\bSPEC\b|\b[Ii]ssues? \d+")
    files = _cited_files()
    assert {ROOT / "actdb" / "cli.py", ROOT / "benchmarks" / "RESULTS.md", ROOT / "tests" / "conftest.py"} <= set(files)
    found = [f"{p.relative_to(ROOT)}:{i}" for p in files
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found


def _cited_files() -> list[Path]:
    """Every text of the repository a user reads: documents, code and its help, saved queries,
    tests, benchmarks and their results, the ingest jobs and the project file (not this test,
    which names the pattern)."""
    files = [ROOT / "README.md", ROOT / "pyproject.toml", *(ROOT / "docs").glob("*.md")]
    for top in ("actdb", "tests", "queries", "ingest", "benchmarks"):
        files += [p for p in (ROOT / top).rglob("*") if p.suffix in (".py", ".sql", ".sh", ".md", ".html", ".txt")
                  and p.resolve() != Path(__file__).resolve() and "__pycache__" not in p.parts]
    return files


def test_ci_runs_the_readme_test_command():
    root = Path(__file__).parent.parent
    assert "bash tests/run.sh" in (root / ".ci" / "run").read_text()
    assert "bash tests/run.sh" in root.joinpath("README.md").read_text().split("\n\n")[1]


def _examples(help_text: str) -> list[str]:
    """The command lines of the help's `Example:` block (indented lines after it)."""
    lines = help_text.splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip() == "Example:"), None)
    if start is None:
        return []
    out = []
    for l in lines[start + 1:]:
        if not l.startswith("    ") or not l.strip():
            break
        out.append(l.strip())
    return out


def test_every_command_help_has_a_runnable_example():
    """Each `actdb COMMAND --help` shows an Example: block whose lines are that command, with
    arguments and options it accepts (parsed by the command itself, not run)."""
    import shlex

    from click.testing import CliRunner

    from actdb.cli import main
    from actdb.presentation.plot import FIGURES
    from actdb.query.catalogue import find_query

    assert sorted(main.commands) == ["check", "index", "info", "ingest", "match", "neuron", "plot", "query", "report",
                                     "serve", "sql"]
    for name, cmd in main.commands.items():
        r = CliRunner().invoke(main, [name, "--help"])
        assert r.exit_code == 0, r.output
        examples = _examples(r.output)
        assert examples, f"actdb {name} --help: no Example: block\n{r.output}"
        for line in examples:
            assert '"' not in line or "$" not in line.split('"', 1)[1], f"{line}: the shell expands $ in double quotes"
            argv = shlex.split(line)
            assert argv[:2] == ["actdb", name], line
            with cmd.make_context(name, argv[2:]) as ctx:   # a click.UsageError if the line does not parse
                p = ctx.params
            if name == "query" and p.get("name"):
                find_query(p["name"])
            if name == "plot" and p.get("figure") not in (None, "all"):
                assert p["figure"] in FIGURES, line


def test_o_is_one_option_everywhere(tmp_path):
    """-o is --out in every command that writes, and its help says what it writes."""
    from click.testing import CliRunner

    from actdb.cli import main

    writers = {n: c for n, c in main.commands.items() if any("-o" in p.opts for p in c.params)}
    assert sorted(writers) == ["ingest", "match", "plot", "query", "report", "sql"]
    for name, cmd in writers.items():
        (o,) = [p for p in cmd.params if "-o" in p.opts]
        assert o.opts == ["-o", "--out"] and o.name == "out", (name, o.opts)
        assert any(w in o.help for w in ("File", "file", "Folder", "folder")), (name, o.help)
    # --output, -o's old long name in sql and query, still works there (hidden)
    assert "--output" not in CliRunner().invoke(main, ["sql", "--help"]).output
    out = tmp_path / "a.csv"
    for name in ("sql", "query"):
        r = CliRunner().invoke(main, [name, str(tmp_path / "none"), "dead_per_layer", "-f", "csv", "--output", str(out)])
        assert r.output.strip() == f"Error: {tmp_path / 'none'}: no such store", r.output   # parsed, then refused
        r = CliRunner().invoke(main, [name, str(tmp_path / "none"), "x", "-o", str(out), "--output", str(tmp_path / "b")])
        assert r.exit_code == 2 and "give one" in r.output, r.output


def test_rule_is_one_option_with_one_help():
    from actdb.cli import main

    rules = [p for c in main.commands.values() for p in c.params if "--rule" in p.opts]
    assert len(rules) == 4 and len({p.help for p in rules}) == 1
