-- title: Detected tokens per layer that no layer below detects
-- reproduces: Voita et al. 2023, Figure 4 (tokens covered in each layer: new vs all layers below)
-- param: max_cov = index_info.tok_max_cov   at most this many tokens cover the neuron
-- param: p_cov = index_info.p_cov           coverage share
-- param: p_token = index_info.p_token       P(fires | token) for a covered token
-- param: p_share = index_info.p_share       share of fires the covered tokens account for
WITH d AS (SELECT DISTINCT layer, unnest(token_ids) AS token_id
           FROM token_detectors_at(max_cov := $max_cov, p_cov := $p_cov, p_token := $p_token, p_share := $p_share)),
     l AS (SELECT DISTINCT layer FROM neurons)
SELECT l.layer,
       (SELECT count(*) FROM d WHERE d.layer = l.layer) AS n_tokens,
       (SELECT count(*) FROM d WHERE d.layer = l.layer
          AND d.token_id NOT IN (SELECT token_id FROM d d2 WHERE d2.layer < l.layer)) AS n_new
FROM l ORDER BY l.layer
