"""The README's settings tables are generated from actdb/settings.py and must match it."""
from pathlib import Path

import pytest

from actdb.settings import IndexSettings, IngestSettings, QuerySettings, RaySettings, ServeSettings, settings_table


@pytest.mark.parametrize("marker, cls", [("settings-table", IngestSettings), ("index-settings-table", IndexSettings),
                                         ("ray-settings-table", RaySettings),
                                         ("query-settings-table", QuerySettings),
                                         ("serve-settings-table", ServeSettings)])
def test_readme_settings_table_is_current(marker, cls):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start = readme.index(f"<!-- {marker} -->") + len(f"<!-- {marker} -->")
    end = readme.index(f"<!-- /{marker} -->")
    assert readme[start:end].strip() == settings_table(cls), f"regenerate with actdb.settings.settings_table({cls.__name__})"


def test_ci_runs_the_readme_test_command():
    root = Path(__file__).parent.parent
    assert "bash tests/run.sh" in (root / ".ci" / "run").read_text()
    assert "bash tests/run.sh" in root.joinpath("README.md").read_text().split("\n\n")[1]
