"""The thresholds' value ranges: the Python check (settings.RANGES) and the SQL the views run
(query/views.RANGE_SQL) live in two layers and must agree on every value."""
import duckdb
import pytest

from actdb.query.views import RANGE_SQL
from actdb.settings import RANGES, THRESHOLDS, range_problem, threshold_range

# the edges of every range, and values just inside and outside them
VALUES = [-1.0, -1e-9, 0.0, 1e-9, 0.25, 0.4999999, 0.5, 0.5000001, 0.95, 1.0, 1.0000001, 1.5, 2.0, 3.0, 50.0, 1e6]


def test_every_kind_has_its_sql_and_every_threshold_a_kind():
    assert set(RANGE_SQL) == set(RANGES)
    assert {threshold_range(t) for t in THRESHOLDS} <= set(RANGES)


@pytest.mark.parametrize("kind", sorted(RANGES))
def test_sql_and_python_agree_on_every_value(kind):
    con = duckdb.connect()
    for v in VALUES:
        sql = con.execute(f"SELECT {RANGE_SQL[kind].format(v='$v')}", {"v": v}).fetchone()[0]
        # the Python check of an integer kind wants an int: give it one where the value is whole
        py = range_problem(kind, int(v) if v == int(v) else v) is None
        assert sql == py, (kind, v, sql, py)


def test_the_checks_refuse_something():
    """Each kind admits some values and refuses others (a check that passes everything would agree)."""
    for kind in RANGES:
        ok = [range_problem(kind, int(v) if v == int(v) else v) is None for v in VALUES]
        assert any(ok) and not all(ok), kind
