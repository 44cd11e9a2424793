-- title: Dimensions that host massive activations, the layers they span, and the tokens they sit on
-- reproduces: Sun et al. 2024, §2 (few fixed dimensions; starting token and delimiters such as "." and "\n")
-- param: abs_min = index_info.abs_min   |h| must exceed this
-- param: ratio = index_info.ratio       and be at least this many times the sequence's median |h|
WITH m AS (SELECT * FROM massive_activations_at(abs_min := $abs_min, ratio := $ratio)),
t AS (SELECT dim, token, count(*) AS n, row_number() OVER (PARTITION BY dim ORDER BY count(*) DESC, token) AS r
      FROM m GROUP BY dim, token)
SELECT dim, count(*) AS n_activations, count(DISTINCT layer) AS n_layers, min(layer) AS first_layer,
       max(layer) AS last_layer, max(abs(value)) AS max_abs,
       avg((pos = 0)::INT) AS share_first_position,
       avg((trim(token, E' \n\t') IN ('', '.', ',', ';', ':'))::INT) AS share_delimiter,
       (SELECT list(t.token ORDER BY t.r) FROM t WHERE t.dim = m.dim AND t.r <= 5) AS top_tokens
FROM m
GROUP BY dim
ORDER BY n_activations DESC, dim
