-- title: Neurons per layer by the number of bigrams / trigrams covering share p of their fires
-- reproduces: Voita et al. 2023, Figures 12 (bigrams) and 13 (trigrams); n-gram layers of the index only
-- param: p = index_info.p_cov   share of a neuron's fires the covering n-grams must reach
WITH bins(n, bin, lo, hi) AS (VALUES
        (2, '1-50', 1, 50), (2, '51-100', 51, 100), (2, '101-200', 101, 200), (2, '201-500', 201, 500),
        (2, '501-1k', 501, 1000), (2, '1k-2k', 1001, 2000), (2, '2k-5k', 2001, 5000), (2, '5k-1M', 5001, 1000000),
        (3, '1-50', 1, 50), (3, '51-100', 51, 100), (3, '101-200', 101, 200), (3, '201-500', 201, 500),
        (3, '501-1k', 501, 1000), (3, '1k-5k', 1001, 5000), (3, '5k-20k', 5001, 20000), (3, '20k-3M', 20001, 3000000)),
     c AS (SELECT layer, n, n_covering FROM coverage2(p := $p) UNION ALL SELECT layer, n, n_covering FROM coverage3(p := $p)),
     l AS (SELECT layer FROM ngram_layers)
SELECT b.n, l.layer, b.bin, b.lo, b.hi, count(c.n_covering) AS n_neurons
FROM l CROSS JOIN bins b
LEFT JOIN c ON c.layer = l.layer AND c.n = b.n AND c.n_covering BETWEEN b.lo AND b.hi
GROUP BY b.n, l.layer, b.bin, b.lo, b.hi
ORDER BY b.n, l.layer, b.lo
