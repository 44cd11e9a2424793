"""`actdb neuron`: a neuron's card agrees with the masks and the planted behaviour."""
from click.testing import CliRunner

from actdb.presentation.card import sparkline
from actdb.cli import main


def card(store, *args: str):
    return CliRunner().invoke(main, ["neuron", str(store.path), *args])


def test_card_of_a_planted_token_detector(known_store):
    # layer 0, neuron 1 fires exactly on token w5 (tests/test_index.py known_masks)
    r = card(known_store, "0", "1", "--contexts", "4")
    assert r.exit_code == 0, r.output
    fires = int(known_store.neuron(0, 1).sum())
    ids = known_store.tokens().sort("row")["token_id"].to_numpy()
    assert fires == int((ids == 5).sum()) > 0
    assert f"fires        {fires:,} of {known_store.manifest.n_tokens:,} tokens" in r.output
    assert "token detector of ['w5']" in r.output
    assert "top tokens   'w5'" in r.output and "(P=1.00)" in r.output
    ctx = [l for l in r.output.splitlines() if l.startswith("  row")]
    assert len(ctx) == 4 and all(l.endswith("[w5]") for l in ctx)
    assert "promotes" in r.output and "suppresses" in r.output


def test_card_shows_trigrams_with_pad_marked(known_store):
    """A trigram detector's trigrams as text; a slot before the sequence start is ∅, never a token."""
    from actdb.explore.neuron import trigram_texts

    r = card(known_store, "0", "6")          # detects the planted trigram 3 4 5
    assert r.exit_code == 0, r.output
    assert "trigram detector of 1 trigram(s): ('w3', 'w4', 'w5')" in r.output
    # neuron 0:1 fires on every w5, so (PAD, BOS, w5) at position 1 is among its covered trigrams
    grams = known_store.sql("SELECT ngrams FROM trigram_detectors WHERE layer = 0 AND neuron = 1")["ngrams"].to_list()[0]
    texts = trigram_texts(known_store, grams)
    assert "(∅, 'w2', 'w5')" in texts and all(t.endswith("'w5')") for t in texts)
    assert sum("∅" in t for t in texts) == 1
    r = card(known_store, "0", "1", "--top", "3")
    assert f"trigram detector of {len(grams)} trigram(s): " in r.output and f"… {len(grams) - 3} more" in r.output


def test_card_of_dead_and_positional_neurons(known_store):
    r = card(known_store, "0", "0")
    assert r.exit_code == 0 and "DEAD: never fires" in r.output
    r = card(known_store, "1", "3")       # oscillatory: fires on positions 0-3 and 8-11
    assert r.exit_code == 0 and "strong oscillatory" in r.output


def test_card_errors_are_one_line(known_store):
    for args, text in ((["0", "999"], f"neuron 0:999: not in store {known_store.path} (neurons 0..15)"),
                       (["7", "0"], f"layer 7: not recorded in store {known_store.path} (recorded layers: 0, 1, 2)")):
        r = card(known_store, *args)
        assert r.exit_code == 1 and text in r.output and len(r.output.strip().splitlines()) == 1


def test_sparkline_levels():
    assert sparkline([0.0, 1.0]) == " █"
    assert sparkline([0.0] * 10 + [1.0] * 10, width=2) == " █"
    assert sparkline([]) == ""
