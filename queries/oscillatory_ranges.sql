-- title: Position ranges on which each strong oscillatory neuron fires (frequency exactly 1)
-- reproduces: Voita et al. 2023, Figure 9
-- param: mi_min = index_info.mi_min               mutual information threshold I(act; pos)
-- param: min_switches = index_info.min_switches   alternations between ~0 and ~1 frequency that make a pattern oscillatory
SELECT layer, neuron, pos_start, pos_end
FROM oscillatory_ranges_at(mi_min := $mi_min, min_switches := $min_switches)
ORDER BY layer, neuron, pos_start
