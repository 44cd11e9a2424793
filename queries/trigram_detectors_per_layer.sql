-- title: Trigram-detecting neurons and covered trigrams per layer: cumulative, new overall, new vs the previous layer
-- reproduces: Voita et al. 2023, Figures 14a, 14b and 15 (covered by 1 to max_cov trigrams, the paper's 50); n-gram layers of the index only
-- param: max_cov = index_info.tri_max_cov   at most this many trigrams cover the neuron
-- param: p_cov = index_info.p_cov           coverage share
-- param: p_token = index_info.p_token       P(fires | trigram) for a covered trigram
-- param: p_share = index_info.p_share       share of fires the covered trigrams account for
WITH det AS (SELECT * FROM trigram_detectors_at(max_cov := $max_cov, p_cov := $p_cov, p_token := $p_token, p_share := $p_share)),
     d AS (SELECT DISTINCT layer, unnest(ngrams) AS ngram FROM det),
     l AS (SELECT layer FROM ngram_layers),
     ll AS (SELECT layer, lag(layer) OVER (ORDER BY layer) AS prev FROM l)
SELECT ll.layer,
       (SELECT count(*) FROM det WHERE det.layer = ll.layer) AS n_detectors,
       (SELECT count(*) FROM d WHERE d.layer = ll.layer) AS n_trigrams,
       (SELECT count(DISTINCT ngram) FROM d WHERE d.layer <= ll.layer) AS n_trigrams_cumulative,
       (SELECT count(*) FROM d WHERE d.layer = ll.layer
          AND d.ngram NOT IN (SELECT ngram FROM d d2 WHERE d2.layer < ll.layer)) AS n_new_overall,
       (SELECT count(*) FROM d WHERE d.layer = ll.layer
          AND d.ngram NOT IN (SELECT ngram FROM d d2 WHERE d2.layer = ll.prev)) AS n_new_vs_previous
FROM ll ORDER BY ll.layer
