-- title: Number of token-detecting neurons per layer
-- reproduces: Voita et al. 2023, Figure 3a (covered by 1 to max_cov tokens; the covered tokens, each with P(fires | token) >= p_token, account for >= p_share of its fires; the paper's 5 and 0.95 are the index's defaults)
-- param: max_cov = index_info.tok_max_cov   at most this many tokens cover the neuron
-- param: p_cov = index_info.p_cov           coverage share
-- param: p_token = index_info.p_token       P(fires | token) for a covered token
-- param: p_share = index_info.p_share       share of fires the covered tokens account for
WITH d AS (SELECT * FROM token_detectors_at(max_cov := $max_cov, p_cov := $p_cov, p_token := $p_token, p_share := $p_share))
SELECT l.layer, count(d.neuron) AS n_detectors
FROM (SELECT DISTINCT layer FROM neurons) l LEFT JOIN d USING (layer)
GROUP BY l.layer ORDER BY l.layer
