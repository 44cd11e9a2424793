-- title: Percentage of dead neurons per layer
-- reproduces: Voita et al. 2023, Figure 1a (dead = fires on no token of the store)
SELECT layer, n_neurons, n_dead, 100 * dead_frac AS dead_pct
FROM layer_stats
ORDER BY layer
