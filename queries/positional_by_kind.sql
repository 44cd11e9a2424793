-- title: Positional neurons (I(act; pos) > mi_min) per layer by pattern kind and strong/weak
-- reproduces: Voita et al. 2023, Figures 7 and 8 (full-length sequences only)
-- param: mi_min = index_info.mi_min               mutual information threshold
-- param: min_switches = index_info.min_switches   alternations between ~0 and ~1 frequency that make a pattern oscillatory
WITH p AS (SELECT * FROM positional_neurons_at(mi_min := $mi_min, min_switches := $min_switches))
SELECT layer, pattern, strong, count(*) AS n_neurons
FROM p GROUP BY ALL ORDER BY layer, pattern, strong
