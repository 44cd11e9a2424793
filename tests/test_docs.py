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
    """The words a user reads say what actdb does in its own terms: they cite docs/, never a
    specification section or an issue number the user does not have."""
    pattern = re.compile(r"\bSPEC\b|\b[Ii]ssues? \d+")
    found = [f"{p.relative_to(ROOT)}:{i}" for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found


def test_ci_runs_the_readme_test_command():
    root = Path(__file__).parent.parent
    assert "bash tests/run.sh" in (root / ".ci" / "run").read_text()
    assert "bash tests/run.sh" in root.joinpath("README.md").read_text().split("\n\n")[1]
