-- title: Mean firing frequency of alive neurons per layer
-- reproduces: Voita et al. 2023, Figure 1b (average over non-dead neurons)
SELECT layer, n_neurons - n_dead AS n_alive, mean_freq_alive
FROM layer_stats
ORDER BY layer
