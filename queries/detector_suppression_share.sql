-- title: Share of token detectors whose update suppresses their own triggers (mean projection score < 0)
-- reproduces: Voita et al. 2023, §4.4 and Figure 6 ("over 80 %" of token detectors); the last row (layer NULL) is all layers
SELECT layer, count(*) AS n_detectors, count(*) FILTER (WHERE suppresses) AS n_suppressing,
       avg(suppresses::INT) AS share_suppressing
FROM detector_suppression
GROUP BY ROLLUP (layer)
ORDER BY layer NULLS LAST
