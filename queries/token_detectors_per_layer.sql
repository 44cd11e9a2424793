-- title: Number of token-detecting neurons per layer
-- reproduces: Voita et al. 2023, Figure 3a (coverage 1-5 tokens; covered tokens P(fire|token) >= 0.95 account for >= 95 % of fires)
-- param: max_cov = 5     at most this many tokens cover the neuron
-- param: p_cov = 0.95    coverage share
-- param: p_token = 0.95  P(fires | token) for a covered token
-- param: p_share = 0.95  share of fires the covered tokens account for
WITH d AS (SELECT * FROM token_detectors_at(max_cov := $max_cov, p_cov := $p_cov, p_token := $p_token, p_share := $p_share))
SELECT l.layer, count(d.neuron) AS n_detectors
FROM (SELECT DISTINCT layer FROM neurons) l LEFT JOIN d USING (layer)
GROUP BY l.layer ORDER BY l.layer
