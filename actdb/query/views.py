"""The SQL layer: DuckDB views over a store and its index, read-only user SQL with bound
parameters, and the saved queries of `queries/`.

Views: tokens, vocab, neurons, neuron_domains, layer_stats, neuron_tokens,
neuron_bigrams, neuron_trigrams, token_counts, bigram_counts, trigram_counts, coverage,
token_detectors, trigram_detectors, neuron_positions, position_counts, positional_neurons,
ngram_layers, oscillatory_ranges, index_info (its `rule`: the fire rule the views answer for),
fire_rules (every recorded rule with its per-layer thresholds), neuron_thresholds (the per-neuron thresholds
of the ntop:Q rules: rule, layer, neuron, threshold). Thresholds are table macros whose defaults are
the thresholds the index was built with (index.json, shown by `index_info`; the paper's unless
`actdb index` was given others, see settings.IndexSettings):

    coverage_at(p := p_cov)
    token_detectors_at(max_cov := tok_max_cov, p_cov, p_token, p_share)
    trigram_detectors_at(max_cov := tri_max_cov, p_cov, p_token, p_share)
    positional_neurons_at(mi_min, min_switches)
    oscillatory_ranges_at(mi_min, min_switches)
    massive_activations_at(abs_min, ratio, source := 'resid')

and each view is its macro at the defaults. A threshold out of its range (settings.RANGES, in SQL
RANGE_SQL: p in (0, 1], max_cov an integer >= 1, mi_min >= 0, ...) stops the query with "expected X, got Y".

Definitions where the papers' detectors and positional neurons leave room (all on full-length
sequences, fr(pos) per position):
- n-grams: slots before the sequence start are PAD, so the bigram at position 0 is
  (PAD, x_0) and the trigram at 1 is (PAD, x_0, x_1); `token_ids` holds NULL for a PAD slot
  (ngram ids: base `vocab_base` = vocabulary + 1, PAD digit vocab_base - 1). Every n is counted
  on the same rows, all but the BOS position where the tokenizer adds a prefix token (BOS is a
  token, so the bigram ending at position 1 is (BOS, x_1)): a neuron's coverage `fires` is the
  same for n = 1, 2, 3, and P(fires | n-gram) is counted on those rows too.
- a position is *high* when fr(pos) >= 1 - eps, *low* when fr(pos) <= eps (eps: `weak_eps`, fixed
  at index time); `switches_weak` counts high<->low changes along positions,
  skipping positions in between; `switches_exact` the same with eps = 0 (exactly 0 / 1).
- pattern: 'oscillatory' when switches_weak >= min_switches (default 3: on-off-on-off);
  else 'both extremes' when it has a low and a high position; else 'one extreme' when it has
  one of them; else 'other'.
- strong: the pattern holds with exact extremes (oscillatory: switches_exact >= min_switches;
  both extremes: min fr = 0 and max fr = 1; one extreme: min fr = 0 or max fr = 1); 'other'
  is never strong. Weak = positional neuron that is not strong.
- oscillatory_ranges (Fig. 9): maximal runs of positions with fr(pos) = 1 of strong
  oscillatory neurons.
- coverage uses the neuron's n-gram fires as the 100 %; dead neurons (and neurons that only
  fire on BOS) have no coverage row.
- neuron_tokens/bigrams/trigrams keep each neuron's top_k n-grams (index_info.top_k). Coverage
  and detectors at the recorded thresholds are exact (precomputed from all counts). Other
  thresholds use the top_k rows: coverage_at(p).n_covering is NULL when more than top_k
  n-grams are needed; detectors count covered n-grams among the top_k only.
"""
from __future__ import annotations

from pathlib import Path

from ..settings import RANGES, THRESHOLDS, threshold_range
from ..store.index_info import IndexConfig, IndexInfo
from ..store.layout import (INDEX_CAPTURE_DIR, INDEX_CAPTURE_LAYERS, INDEX_MASSIVE, INDEX_PROJECTION_FILE, PART_GLOB, TOKENS_DIR, VOCAB_FILE,
                            index_file, index_table)


def _lit(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


PRECOMPUTED = ("coverage", "token_detectors", "trigram_detectors")


def _num(value: float | int) -> str:
    """A validated threshold as a SQL literal (repr: exact, never an exponent DuckDB misreads)."""
    return repr(int(value)) if isinstance(value, int) else repr(float(value))


# The thresholds' value ranges as SQL conditions on {v}, one per kind of settings.RANGES, whose
# Python tests they must agree with (a test compares the two on the edges of every range).
RANGE_SQL = {
    "share": "{v}::DOUBLE > 0 AND {v}::DOUBLE <= 1",
    "count": "{v}::DOUBLE = floor({v}::DOUBLE) AND {v} >= 1",
    "nonneg": "{v}::DOUBLE >= 0",
    "eps": "{v}::DOUBLE >= 0 AND {v}::DOUBLE < 0.5",
}


def _range_macros() -> list[str]:
    """One scalar macro per threshold: true, or error('PARAM: expected X, got Y') naming the
    macro parameter the user passed (max_cov, p, ...)."""
    out = []
    for name in THRESHOLDS:
        kind = threshold_range(name)
        expected, cond = RANGES[kind][0], RANGE_SQL[kind]
        out.append(f"""CREATE MACRO _actdb_check_{name}(v, param) AS CASE WHEN v IS NOT NULL AND ({cond.format(v='v')})
            THEN true ELSE error(param || ': expected {expected}, got ' || coalesce(v::VARCHAR, 'NULL')) END""")
    return out


def _checked(body: str, checks: dict[str, str]) -> str:
    """`body` behind the range checks of its threshold parameters {threshold: macro parameter}.
    A materialized one-row CTE: evaluated once, and before the body even when its table is empty."""
    cond = " AND ".join(f"_actdb_check_{name}({param}, '{param}')" for name, param in checks.items())
    return f"WITH _chk AS MATERIALIZED (SELECT {cond} AS ok) SELECT _b.* FROM _chk, ({body}) _b WHERE _chk.ok"


def _views(root: Path, m, info: IndexInfo, pre: bool = True, index_root: Path | None = None,
           rule: str = "sign") -> list[str]:
    """SQL that creates the views and macros. pre: answer the recorded thresholds from the tables
    the index precomputed (index/coverage.parquet ...), other thresholds by a scan. Only values
    of the validated records (store.index_info.IndexInfo, the manifest) are written into the SQL.
    index_root: the folder holding the index of fire rule `rule` (store.layout.rule_dir; default
    the store: the sign rule)."""
    c: IndexConfig = info.config
    index_root = root if index_root is None else index_root
    N = int(m.n_tokens)
    V = int(c.vocab_base)
    eps = _num(c.weak_eps)
    if pre and not all(index_table(index_root, t).exists() for t in PRECOMPUTED):
        pre = False
    P = _num(c.p_cov)
    tokens = _lit(root / TOKENS_DIR / PART_GLOB)

    def rp(name: str) -> str:
        return f"read_parquet({_lit(index_table(index_root, name))})"

    def decode(col: str, n: int) -> str:
        """token ids of an n-gram id, first to last; NULL for PAD, the slot before the sequence start."""
        pad = int(c.ngram_pad)
        return "[" + ", ".join(f"nullif(({col} // {V ** (n - 1 - i)}) % {V}, {pad})::INT" for i in range(n)) + "]"

    nl = ", ".join(str(int(l)) for l in c.ngram_layers) or "NULL"
    thr = ", ".join(f"{_num(v)}{'::DOUBLE' if isinstance(v, float) else ''} AS {k}" for k, v in c.thresholds().items())
    v = _range_macros() + [
        f"CREATE VIEW ngram_layers AS SELECT unnest([{nl}])::INT AS layer",
        f"""CREATE VIEW index_info AS SELECT {int(c.version)} AS version,
            {int(c.top_k)}::INT AS top_k, [{nl.replace('NULL', '')}]::INT[] AS ngram_layers, {V}::BIGINT AS vocab_base,
            {int(c.ngram_pad)}::BIGINT AS ngram_pad, {_lit(rule)} AS rule, {thr}""",
        _fire_rules_view(m),
        _neuron_thresholds_view(root, m),
        f"CREATE VIEW vocab AS SELECT token_id, token, piece FROM read_parquet({_lit(root / VOCAB_FILE)})",
        f"""CREATE VIEW tokens AS SELECT t.row, t.seq, t.pos, t.token_id, v.token, t.doc, t.domain::VARCHAR AS domain
            FROM read_parquet({tokens}) t LEFT JOIN vocab v USING (token_id)""",
        f"""CREATE VIEW neurons AS SELECT layer::INT AS layer, neuron, fires, fires / {N}::DOUBLE AS freq,
            fires = 0 AS dead FROM {rp('neuron_fires')}""",
        f"""CREATE VIEW domain_counts AS SELECT domain::VARCHAR AS domain, count(*) AS n
            FROM read_parquet({tokens}) GROUP BY ALL""",
        f"""CREATE VIEW neuron_domains AS SELECT d.layer::INT AS layer, d.neuron, d.domain, d.fires,
            d.fires / c.n::DOUBLE AS freq FROM {rp('neuron_domains')} d JOIN domain_counts c USING (domain)""",
        """CREATE VIEW layer_stats AS SELECT layer, count(*) AS n_neurons, count(*) FILTER (WHERE dead) AS n_dead,
            count(*) FILTER (WHERE dead) / count(*)::DOUBLE AS dead_frac,
            avg(freq) FILTER (WHERE NOT dead) AS mean_freq_alive FROM neurons GROUP BY layer""",
        f"CREATE VIEW token_counts AS SELECT token_id, count FROM {rp('token_counts')}",
        f"CREATE VIEW bigram_counts AS SELECT ngram, {decode('ngram', 2)} AS token_ids, count FROM {rp('bigram_counts')}",
        f"CREATE VIEW trigram_counts AS SELECT ngram, {decode('ngram', 3)} AS token_ids, count FROM {rp('trigram_counts')}",
        f"""CREATE VIEW neuron_tokens AS SELECT layer::INT AS layer, neuron, token_id, fires, rank, cum, total
            FROM {rp('neuron_tokens')}""",
        f"""CREATE VIEW neuron_bigrams AS SELECT layer::INT AS layer, neuron, ngram, {decode('ngram', 2)} AS token_ids,
            fires, rank, cum, total FROM {rp('neuron_bigrams')}""",
        f"""CREATE VIEW neuron_trigrams AS SELECT layer::INT AS layer, neuron, ngram, {decode('ngram', 3)} AS token_ids,
            fires, rank, cum, total FROM {rp('neuron_trigrams')}""",
    ]
    cov = []
    for n, t in ((1, "neuron_tokens"), (2, "neuron_bigrams"), (3, "neuron_trigrams")):
        # other p: from the top-k rows; exact when the covering n-grams are among them, else NULL
        # ("more than top_k"); n_distinct and fires always come from the exact coverage table
        scan = f"""SELECT c.layer::INT AS layer, c.neuron, c.n, k.n_covering, c.n_distinct, c.fires
            FROM {rp('coverage')} c JOIN (
              SELECT layer::INT AS layer, neuron, CASE WHEN max(cum::DOUBLE - p::DOUBLE * total) >= 0
                     THEN count(*) FILTER (WHERE cum - fires < p::DOUBLE * total) END AS n_covering
              FROM {rp(t)} GROUP BY 1, 2) k ON k.layer = c.layer AND k.neuron = c.neuron
            WHERE c.n = {n} {{where}}"""
        if pre:
            body = (f"SELECT layer, neuron, n, n_covering, n_distinct, fires FROM {rp('coverage')} "
                    f"WHERE n = {n} AND p::DOUBLE = {P} UNION ALL "
                    + scan.format(where=f"AND p::DOUBLE <> {P}"))
        else:
            body = scan.format(where="")
        v.append(f"CREATE MACRO coverage{n}(p := {P}) AS TABLE {_checked(body, {'p_cov': 'p'})}")
        cov.append(f"SELECT * FROM coverage{n}(p := p)")
    v.append(f"CREATE MACRO coverage_at(p := {P}) AS TABLE " + " UNION ALL ".join(cov))
    v.append("CREATE VIEW coverage AS SELECT * FROM coverage_at()")
    # detectors
    pt, ps = _num(c.p_token), _num(c.p_share)

    def fast(name: str, max_cov: str, scan: str) -> str:
        """The precomputed table at exactly the recorded thresholds, else the scan; range-checked.
        max_cov: the threshold (tok_max_cov or tri_max_cov) the macro's max_cov stands for."""
        checks = {max_cov: "max_cov", "p_cov": "p_cov", "p_token": "p_token", "p_share": "p_share"}
        if not pre:
            return _checked(scan, checks)
        mc = int(getattr(c, max_cov))
        cond = f"(max_cov = {mc} AND p_cov::DOUBLE = {P} AND p_token::DOUBLE = {pt} AND p_share::DOUBLE = {ps})"
        return _checked(f"SELECT * FROM {rp(name)} WHERE {cond} UNION ALL SELECT * FROM ({scan}) WHERE NOT {cond}",
                        checks)

    det_params = f"p_cov := {P}, p_token := {pt}, p_share := {ps}"
    v.append(f"""CREATE MACRO token_detectors_at(max_cov := {int(c.tok_max_cov)}, {det_params}) AS TABLE
        """ + fast("token_detectors", "tok_max_cov", f"""WITH c AS (SELECT layer, neuron, n_covering, fires FROM coverage1(p := p_cov)
                   WHERE n_covering BETWEEN 1 AND max_cov),
        t AS (SELECT nt.layer::INT AS layer, nt.neuron, nt.token_id, nt.fires, nt.fires / tc.count::DOUBLE AS p_fire
              FROM {rp('neuron_tokens')} nt JOIN token_counts tc USING (token_id)
              WHERE (nt.layer, nt.neuron) IN (SELECT (layer, neuron) FROM c)
                AND nt.fires / tc.count::DOUBLE >= p_token::DOUBLE)
        SELECT layer, neuron, n_covering, token_ids, tokens, share FROM (
          SELECT c.layer, c.neuron, c.n_covering, list(t.token_id ORDER BY t.fires DESC, t.token_id) AS token_ids,
                 list(v.token ORDER BY t.fires DESC, t.token_id) AS tokens, sum(t.fires) / c.fires::DOUBLE AS share,
                 sum(t.fires) AS covered, c.fires AS fires
          FROM c JOIN t USING (layer, neuron) LEFT JOIN vocab v USING (token_id)
          GROUP BY c.layer, c.neuron, c.n_covering, c.fires)
        WHERE covered >= p_share::DOUBLE * fires"""))
    v.append("CREATE VIEW token_detectors AS SELECT * FROM token_detectors_at()")
    v.append(f"""CREATE MACRO trigram_detectors_at(max_cov := {int(c.tri_max_cov)}, {det_params}) AS TABLE
        """ + fast("trigram_detectors", "tri_max_cov", f"""WITH c AS (SELECT layer, neuron, n_covering, fires FROM coverage3(p := p_cov)
                   WHERE n_covering BETWEEN 1 AND max_cov),
        t AS (SELECT nt.layer::INT AS layer, nt.neuron, nt.ngram, nt.fires
              FROM {rp('neuron_trigrams')} nt JOIN {rp('trigram_counts')} tc USING (ngram)
              WHERE (nt.layer, nt.neuron) IN (SELECT (layer, neuron) FROM c)
                AND nt.fires / tc.count::DOUBLE >= p_token::DOUBLE)
        SELECT layer, neuron, n_covering, ngrams, share FROM (
          SELECT c.layer, c.neuron, c.n_covering, list(t.ngram ORDER BY t.fires DESC, t.ngram) AS ngrams,
                 sum(t.fires) / c.fires::DOUBLE AS share, sum(t.fires) AS covered, c.fires AS fires
          FROM c JOIN t USING (layer, neuron)
          GROUP BY c.layer, c.neuron, c.n_covering, c.fires)
        WHERE covered >= p_share::DOUBLE * fires"""))
    v.append("CREATE VIEW trigram_detectors AS SELECT * FROM trigram_detectors_at()")
    # positions
    v.append(f"CREATE VIEW position_counts AS SELECT pos, n, n_full FROM {rp('position_counts')}")
    v.append(f"""CREATE VIEW neuron_positions AS SELECT p.layer::INT AS layer, p.neuron, p.pos, p.fires,
        p.fires / c.n::DOUBLE AS freq, p.fires_full, p.fires_full / nullif(c.n_full, 0)::DOUBLE AS freq_full
        FROM {rp('neuron_positions')} p JOIN {rp('position_counts')} c USING (pos)""")
    positional = f"""SELECT layer::INT AS layer, neuron, mi,
          CASE WHEN switches_weak >= min_switches THEN 'oscillatory'
               WHEN fr_min <= {eps} AND fr_max >= 1 - {eps} THEN 'both extremes'
               WHEN fr_min <= {eps} OR fr_max >= 1 - {eps} THEN 'one extreme'
               ELSE 'other' END AS pattern,
          CASE WHEN switches_weak >= min_switches THEN switches_exact >= min_switches
               WHEN fr_min <= {eps} AND fr_max >= 1 - {eps} THEN fr_min = 0 AND fr_max = 1
               WHEN fr_min <= {eps} OR fr_max >= 1 - {eps} THEN fr_min = 0 OR fr_max = 1
               ELSE false END AS strong,
          fr_min, fr_max, switches_exact, switches_weak
        FROM {rp('positional')} WHERE mi > mi_min"""
    pos_params = f"mi_min := {_num(c.mi_min)}, min_switches := {int(c.min_switches)}"
    v.append(f"CREATE MACRO positional_neurons_at({pos_params}) AS TABLE "
             + _checked(positional, {"mi_min": "mi_min", "min_switches": "min_switches"}))
    v.append("CREATE VIEW positional_neurons AS SELECT * FROM positional_neurons_at()")
    v.append(f"""CREATE MACRO oscillatory_ranges_at({pos_params}) AS TABLE
        WITH s AS (SELECT layer, neuron FROM positional_neurons_at(mi_min := mi_min, min_switches := min_switches)
                   WHERE pattern = 'oscillatory' AND strong),
        f AS (SELECT p.layer::INT AS layer, p.neuron, p.pos FROM {rp('neuron_positions')} p
              JOIN {rp('position_counts')} c USING (pos)
              WHERE c.n_full > 0 AND p.fires_full = c.n_full AND (p.layer, p.neuron) IN (SELECT (layer, neuron) FROM s)),
        g AS (SELECT *, pos - row_number() OVER (PARTITION BY layer, neuron ORDER BY pos) AS grp FROM f)
        SELECT layer, neuron, min(pos)::INT AS pos_start, max(pos)::INT AS pos_end FROM g
        GROUP BY layer, neuron, grp""")
    v.append("CREATE VIEW oscillatory_ranges AS SELECT * FROM oscillatory_ranges_at()")
    return v


def _fire_rules_view(m) -> str:
    """fire_rules: rule, rank (1 = the views' default), definition, layer, threshold (NULL for sign)."""
    rows = []
    for rank, name in enumerate(m.rules, 1):
        r = m.rule_record(name)
        for i, layer in enumerate(m.layers):
            t = repr(float(r.thresholds[i])) if r.thresholds else "NULL"
            rows.append(f"({_lit(name)}, {rank}, {_lit(r.definition)}, {int(layer)}, {t}::DOUBLE)")
    return ("CREATE VIEW fire_rules AS SELECT * FROM (VALUES " + ", ".join(rows) +
            ") t(rule, rank, definition, layer, threshold)")


def _neuron_thresholds_view(root: Path, m) -> str:
    """neuron_thresholds: rule, layer, neuron, threshold of every per-neuron rule (ntop:Q), from its
    file (store/neuron_thresholds.py); no rows when the store records none."""
    from ..grammar import NEURON_THRESHOLDS, parse_fire_rule
    from ..store.layout import rule_thresholds

    parts = [f"SELECT {_lit(r)} AS rule, layer, neuron, threshold::DOUBLE AS threshold "
             f"FROM read_parquet({_lit(rule_thresholds(root, r))})"
             for r in m.rules if parse_fire_rule(r).kind in NEURON_THRESHOLDS]
    body = " UNION ALL ".join(parts) or ("SELECT NULL::VARCHAR AS rule, NULL::INT AS layer, NULL::INT AS neuron, "
                                         "NULL::DOUBLE AS threshold WHERE false")
    return f"CREATE VIEW neuron_thresholds AS {body}"


def massive_views(root: Path, info: IndexInfo, summaries: bool = True) -> list[str]:
    """capture_topk (the capture Parquet, a row per token, layer and rank), massive_activations_at
    and, with summaries (an index with capture_layers.parquet and massive.parquet: actdb 0.x
    indexes before them lack both), capture_layers and massive_rows. At thresholds at least as
    strict as the recorded ones the macro reads massive_rows (the rows past the recorded ones, a
    superset filtered again here), else the capture Parquet: DuckDB folds the branch not taken, so
    a query at the defaults reads no table that grows with tokens."""
    c = info.config
    glob = _lit(index_file(root, INDEX_CAPTURE_DIR) / PART_GLOB)
    cols = "c.row, c.layer, c.dim, c.value, c.median_abs, c.token_median_abs, c.rank"
    passes = "c.kind = source AND abs(c.value) > abs_min AND abs(c.value) >= ratio * c.median_abs"
    scan = f"""SELECT {cols}, t.seq, t.pos, t.token_id, t.token
           FROM capture_topk c JOIN tokens t USING (row) WHERE {passes}"""
    views = [f"CREATE VIEW capture_topk AS SELECT kind::VARCHAR AS kind, row, layer::INT AS layer, rank::INT AS rank, "
             f"dim, value, token_median_abs, median_abs FROM read_parquet({glob})"]
    if summaries:
        recorded = f"abs_min >= {_num(c.abs_min)} AND ratio >= {_num(c.ratio)}"
        scan = f"""SELECT {cols}, c.seq, c.pos, c.token_id, v.token
           FROM massive_rows c LEFT JOIN vocab v USING (token_id) WHERE ({recorded}) AND {passes}
           UNION ALL {scan} AND NOT ({recorded})"""
        views += [
            f"CREATE VIEW capture_layers AS SELECT kind, layer::INT AS layer, top3, top1, median_abs, n_rows "
            f"FROM read_parquet({_lit(index_file(root, INDEX_CAPTURE_LAYERS))})",
            f"CREATE VIEW massive_rows AS SELECT kind::VARCHAR AS kind, row, layer::INT AS layer, rank::INT AS rank, "
            f"dim, value, token_median_abs, median_abs, seq, pos, token_id "
            f"FROM read_parquet({_lit(index_file(root, INDEX_MASSIVE))})"]
    return views + [
        f"CREATE MACRO massive_activations_at(abs_min := {_num(c.abs_min)}, ratio := {_num(c.ratio)}, "
        f"source := 'resid') AS TABLE " + _checked(scan, {"abs_min": "abs_min", "ratio": "ratio"}),
        "CREATE VIEW massive_activations AS SELECT * FROM massive_activations_at()",
    ]


def register_proj_score(con, store, name: str = "proj_score") -> None:
    """proj_score(layer, neuron, token_id) -> DOUBLE on a DuckDB connection (under `name`: one per
    store where several share the connection)."""
    import duckdb

    proj = None

    def fn(layer, neuron, token_id):
        # pyarrow, numpy and the weights load on the first call: opening the views stays cheap
        import pyarrow as pa

        from ..store.projection_weights import Projection

        nonlocal proj
        proj = proj or Projection(store)
        return pa.array(proj.scores(layer.to_numpy(zero_copy_only=False), neuron.to_numpy(zero_copy_only=False),
                                    token_id.to_numpy(zero_copy_only=False)), pa.float64())

    t = duckdb.sqltypes  # duckdb.typing before 2.0
    con.create_function(name, fn, [t.INTEGER, t.INTEGER, t.INTEGER], t.DOUBLE, type="arrow",
                        null_handling="special")


def projection_views(root: Path, info: IndexInfo) -> list[str]:
    c = info.config
    path = _lit(index_file(root, INDEX_PROJECTION_FILE))
    det_params = (f"max_cov := {int(c.tok_max_cov)}, p_cov := {_num(c.p_cov)}, p_token := {_num(c.p_token)}, "
                  f"p_share := {_num(c.p_share)}")
    return [
        f"CREATE VIEW vocab_projection_all AS SELECT * FROM read_parquet({path})",
        """CREATE MACRO vocab_projection_at(k := 10) AS TABLE
           SELECT p.layer, p.neuron, p.token_id, v.token, p.score, p.rank,
                  CASE WHEN p.rank > 0 THEN 'promoted' ELSE 'suppressed' END AS direction
           FROM vocab_projection_all p LEFT JOIN vocab v USING (token_id) WHERE abs(p.rank) <= k""",
        "CREATE VIEW vocab_projection AS SELECT * FROM vocab_projection_at()",
        f"""CREATE MACRO detector_suppression_at({det_params}) AS TABLE
           WITH d AS (SELECT layer, neuron, tokens, unnest(token_ids) AS token_id
                      FROM token_detectors_at(max_cov := max_cov, p_cov := p_cov, p_token := p_token, p_share := p_share))
           SELECT layer, neuron, any_value(tokens) AS tokens, count(*) AS n_covered,
                  avg(proj_score(layer, neuron, token_id)) AS mean_score,
                  avg(proj_score(layer, neuron, token_id)) < 0 AS suppresses
           FROM d GROUP BY layer, neuron""",
        "CREATE VIEW detector_suppression AS SELECT * FROM detector_suppression_at()",
    ]


NEIGHBOUR_FIELDS = ("layer", "neuron", "other_layer", "other_neuron", "n_a", "n_b", "n_both", "n_tokens", "jaccard",
                    "p_other_given", "phi", "rank")   # cofire/'s Neighbour, in order


NEIGHBOURS_UDF = "_actdb_neighbours"


def neighbours_macro() -> str:
    """The table function neighbours(...): one neuron against every neuron of `layers` (default all),
    exact counts and measures (cofire/); a Python UDF, unnested."""
    return f"""CREATE MACRO neighbours(layer, neuron, k := 20, by := 'phi', layers := NULL, rule := NULL, domain := NULL,
        pos_min := NULL, pos_max := NULL) AS TABLE
        SELECT unnest({NEIGHBOURS_UDF}(layer, neuron, k, "by", layers::INTEGER[], rule, domain, pos_min, pos_max),
                      recursive := true)"""


def register_neighbours(con, store, name: str = NEIGHBOURS_UDF) -> None:
    """_actdb_neighbours(...) -> the neighbours of cofire/ as a list of structs, on a DuckDB connection
    (under `name`: one per store where several share the connection)."""
    import dataclasses

    import duckdb

    from ..cofire import Neighbour, TokenSubset, neighbours
    from ..errors import InputError

    t = duckdb.sqltypes
    kinds = {"layer": t.INTEGER, "neuron": t.INTEGER, "other_layer": t.INTEGER, "other_neuron": t.INTEGER,
             "rank": t.INTEGER, "jaccard": t.DOUBLE, "p_other_given": t.DOUBLE, "phi": t.DOUBLE}
    row = con.struct_type({f.name: kinds.get(f.name, t.BIGINT) for f in dataclasses.fields(Neighbour)})

    def fn(layer, neuron, k, by, layers, rule, domain, pos_min, pos_max):
        for name, v in (("layer", layer), ("neuron", neuron), ("k", k), ("by", by)):
            if v is None:
                raise InputError(f"neighbours: {name}: expected a value, got NULL")
        got = neighbours(store, layer, neuron, k, by, layers, rule, TokenSubset(domain, pos_min, pos_max))
        return [dataclasses.asdict(x) for x in got]

    con.create_function(name, fn, [t.INTEGER, t.INTEGER, t.INTEGER, t.VARCHAR,
                                                  con.list_type(t.INTEGER), t.VARCHAR, t.VARCHAR, t.INTEGER,
                                                  t.INTEGER], con.list_type(row), null_handling="special",
                        side_effects=True)


def neighbour_views(index_root: Path) -> list[str]:
    """The view neuron_neighbours over index/neuron_neighbours.parquet (`actdb index --neighbours K`)."""
    from ..store.layout import INDEX_NEIGHBOURS

    return [f"""CREATE VIEW neuron_neighbours AS SELECT layer::INT AS layer, neuron, other_layer, other_neuron, n_both,
        jaccard, p_other_given, phi, rank, scope, n_a, n_b FROM read_parquet({_lit(index_table(index_root, INDEX_NEIGHBOURS))})"""]
