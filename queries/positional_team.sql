-- title: A layer's positional neurons as a team: each one's firing frequency by position, and where it is above its mean
-- reproduces: Voita et al. 2023, §5 (positional neurons work in teams, jointly covering the positions)
-- param: layer = -1                               layer (-1: the layer with the most positional neurons, the lower of equals)
-- param: mi_min = index_info.mi_min               mutual information threshold I(act; pos)
-- param: min_switches = index_info.min_switches   alternations between ~0 and ~1 frequency that make a pattern oscillatory
-- One row per positional neuron of the layer and position of full-length sequences: fr(pos) (freq) and whether it is
-- above the neuron's mean over the positions (above: T * fires(pos) > its fires over all positions, in integers; every
-- position of a full-length sequence is counted on the same n_full sequences).
WITH p AS (SELECT layer, neuron, mi, pattern, strong
           FROM positional_neurons_at(mi_min := $mi_min, min_switches := $min_switches)),
chosen AS (SELECT CASE WHEN $layer >= 0 THEN $layer::INT
                       ELSE (SELECT layer FROM p GROUP BY layer ORDER BY count(*) DESC, layer LIMIT 1) END AS layer),
grid AS (SELECT p.*, c.pos FROM p CROSS JOIN (SELECT pos FROM position_counts WHERE n_full > 0) c
         WHERE p.layer = (SELECT layer FROM chosen)),
f AS (SELECT g.*, coalesce(np.fires_full, 0) AS fires, coalesce(np.freq_full, 0.0) AS freq
      FROM grid g LEFT JOIN neuron_positions np ON np.layer = g.layer AND np.neuron = g.neuron AND np.pos = g.pos)
SELECT layer, neuron, mi, pattern, strong, pos, freq,
       count(*) OVER w * fires > sum(fires) OVER w AS above
FROM f WINDOW w AS (PARTITION BY layer, neuron)
ORDER BY neuron, pos
