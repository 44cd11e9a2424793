-- title: Positional neurons per model and relative depth, by pattern kind and strong/weak
-- reproduces: Voita et al. 2023, §5 and Figures 7-8, across models (full-length sequences only)
-- across: models
-- param: mi_min = index_info.mi_min               mutual information threshold I(act; pos)
-- param: min_switches = index_info.min_switches   alternations between ~0 and ~1 frequency that make a pattern oscillatory
SELECT store, model, n_layers, layer, depth, pattern, strong, count(*) AS n_neurons
FROM positional_neurons_at(mi_min := $mi_min, min_switches := $min_switches)
GROUP BY ALL
ORDER BY n_layers, store, layer, pattern, strong
