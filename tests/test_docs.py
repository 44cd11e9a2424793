"""The README's settings table is generated from actdb/settings.py and must match it."""
from pathlib import Path

from actdb.settings import settings_table


def test_readme_settings_table_is_current():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start = readme.index("<!-- settings-table -->") + len("<!-- settings-table -->")
    end = readme.index("<!-- /settings-table -->")
    assert readme[start:end].strip() == settings_table(), "regenerate with actdb.settings.settings_table()"


def test_ci_runs_the_readme_test_command():
    root = Path(__file__).parent.parent
    assert "bash tests/run.sh" in (root / ".ci" / "run").read_text()
    assert "bash tests/run.sh" in root.joinpath("README.md").read_text().split("\n\n")[1]


def test_readme_index_settings_table_is_current():
    from actdb.settings import IndexSettings

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start = readme.index("<!-- index-settings-table -->") + len("<!-- index-settings-table -->")
    end = readme.index("<!-- /index-settings-table -->")
    assert readme[start:end].strip() == settings_table(IndexSettings), \
        "regenerate with actdb.settings.settings_table(IndexSettings)"


def test_readme_serve_settings_table_is_current():
    from actdb.settings import ServeSettings

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start = readme.index("<!-- serve-settings-table -->") + len("<!-- serve-settings-table -->")
    end = readme.index("<!-- /serve-settings-table -->")
    assert readme[start:end].strip() == settings_table(ServeSettings), \
        "regenerate with actdb.settings.settings_table(ServeSettings)"
