"""The fire-rule grammar (actdb/grammar.py): canonical names, and one line for what it refuses."""
import pytest

from actdb.errors import InputError
from actdb.grammar import RULE_GRAMMAR, parse_fire_rule


@pytest.mark.parametrize("text, name, kind, value", [("sign", "sign", "sign", None), (" sign ", "sign", "sign", None),
                                                     ("abs>.10", "abs>0.1", "abs", 0.1), ("abs>0", "abs>0.0", "abs", 0.0),
                                                     ("top:0.999", "top:0.999", "top", 0.999),
                                                     ("top:0.5", "top:0.5", "top", 0.5)])
def test_rules_parse_to_their_canonical_name(text, name, kind, value):
    r = parse_fire_rule(text)
    assert (r.name, r.kind, r.value) == (name, kind, value)
    assert parse_fire_rule(r.name) == r   # the canonical name reads back as itself


@pytest.mark.parametrize("bad", ["", "Sign", "abs>-1", "abs>nan", "abs>inf", "abs>x", "top:1", "top:0.4", "top:0.999x",
                                 "abs:1", "top>0.9"])
def test_what_the_grammar_refuses(bad):
    with pytest.raises(InputError) as e:
        parse_fire_rule(bad)
    assert str(e.value) == f"--fire-rule: expected {RULE_GRAMMAR}, got {bad!r}"
