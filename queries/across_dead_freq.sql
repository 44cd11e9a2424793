-- title: Dead neurons and mean firing frequency of alive neurons, per model and relative depth
-- reproduces: Voita et al. 2023, Figures 1a and 1b (every model on one axis: depth = layer / (n_layers - 1))
-- across: models
SELECT store, model, n_layers, layer, depth, n_neurons, n_dead, 100 * dead_frac AS dead_pct, mean_freq_alive
FROM layer_stats
ORDER BY n_layers, store, layer
