-- title: Token detectors with their triggers and the tokens they promote and suppress
-- reproduces: Voita et al. 2023, Figure 5 (token detectors: covered tokens, top-k promoted / suppressed in the vocabulary projection)
-- param: k = 5   tokens per direction
WITH p AS (SELECT layer, neuron,
                  list(token ORDER BY rank) FILTER (WHERE rank > 0) AS promoted,
                  list(token ORDER BY rank DESC) FILTER (WHERE rank < 0) AS suppressed
           FROM vocab_projection_at(k := $k) GROUP BY layer, neuron)
SELECT d.layer, d.neuron, d.tokens AS triggers, d.mean_score, d.suppresses, p.promoted, p.suppressed
FROM detector_suppression d JOIN p USING (layer, neuron)
ORDER BY d.layer, d.neuron
