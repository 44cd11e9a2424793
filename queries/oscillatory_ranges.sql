-- title: Position ranges on which each strong oscillatory neuron fires (frequency exactly 1)
-- reproduces: Voita et al. 2023, Figure 9
-- param: mi_min = 0.05
-- param: min_switches = 3
SELECT layer, neuron, pos_start, pos_end
FROM oscillatory_ranges_at(mi_min := $mi_min, min_switches := $min_switches)
ORDER BY layer, neuron, pos_start
