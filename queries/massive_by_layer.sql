-- title: Massive activations per layer and dimension: where they appear and how constant they stay
-- reproduces: Sun et al. 2024, §2 (appear at an early layer, nearly constant across later layers)
-- param: abs_min = index_info.abs_min   |h| must exceed this
-- param: ratio = index_info.ratio       and be at least this many times the sequence's median |h|
SELECT layer, dim, count(*) AS n_activations, avg(abs(value)) AS mean_abs, min(abs(value)) AS min_abs,
       max(abs(value)) AS max_abs, avg(median_abs) AS mean_seq_median_abs
FROM massive_activations_at(abs_min := $abs_min, ratio := $ratio)
GROUP BY layer, dim
ORDER BY dim, layer
