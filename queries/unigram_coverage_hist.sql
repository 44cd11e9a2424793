-- title: Neurons per layer by the number of tokens covering share p of their fires
-- reproduces: Voita et al. 2023, Figure 2 (alive neurons, bins 1-5 ... 2k-50k; BOS position excluded)
-- param: p = index_info.p_cov   share of a neuron's fires the covering tokens must reach
WITH bins(bin, lo, hi) AS (VALUES ('1-5', 1, 5), ('6-10', 6, 10), ('11-20', 11, 20), ('21-50', 21, 50),
                                  ('51-200', 51, 200), ('201-1k', 201, 1000), ('1k-2k', 1001, 2000),
                                  ('2k-50k', 2001, 50000)),
     c AS (SELECT layer, n_covering FROM coverage1(p := $p))
SELECT l.layer, b.bin, b.lo, b.hi, count(c.n_covering) AS n_neurons
FROM (SELECT DISTINCT layer FROM neurons) l CROSS JOIN bins b
LEFT JOIN c ON c.layer = l.layer AND c.n_covering BETWEEN b.lo AND b.hi
GROUP BY l.layer, b.bin, b.lo, b.hi
ORDER BY l.layer, b.lo
