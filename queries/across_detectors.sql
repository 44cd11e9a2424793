-- title: Token detectors, the tokens they detect (per layer and cumulative) and trigram detectors, per model and relative depth
-- reproduces: Voita et al. 2023, Figure 3 (3a detectors, 3b detected tokens) and Figure 14 (trigram detectors; NULL where a layer has no n-gram tables), across models
-- across: models
-- param: max_cov = index_info.tok_max_cov       at most this many tokens cover a token detector
-- param: tri_max_cov = index_info.tri_max_cov   at most this many trigrams cover a trigram detector
-- param: p_cov = index_info.p_cov               coverage share
-- param: p_token = index_info.p_token           P(fires | n-gram) for a covered n-gram
-- param: p_share = index_info.p_share           share of fires the covered n-grams account for
WITH d AS (SELECT store, layer, token_ids
           FROM token_detectors_at(max_cov := $max_cov, p_cov := $p_cov, p_token := $p_token, p_share := $p_share)),
     t AS (SELECT DISTINCT store, layer, unnest(token_ids) AS token_id FROM d),
     g AS (SELECT store, layer, count(*) AS n
           FROM trigram_detectors_at(max_cov := $tri_max_cov, p_cov := $p_cov, p_token := $p_token, p_share := $p_share)
           GROUP BY ALL),
     l AS (SELECT DISTINCT store, model, n_layers, layer, depth FROM neurons)
SELECT l.store, l.model, l.n_layers, l.layer, l.depth,
       (SELECT count(*) FROM d WHERE d.store = l.store AND d.layer = l.layer) AS n_token_detectors,
       (SELECT count(*) FROM t WHERE t.store = l.store AND t.layer = l.layer) AS n_tokens,
       (SELECT count(DISTINCT token_id) FROM t WHERE t.store = l.store AND t.layer <= l.layer) AS n_tokens_cumulative,
       CASE WHEN (l.store, l.layer) IN (SELECT (store, layer) FROM ngram_layers) THEN coalesce(g.n, 0) END
         AS n_trigram_detectors
FROM l LEFT JOIN g ON g.store = l.store AND g.layer = l.layer
ORDER BY l.n_layers, l.store, l.layer
