-- title: Per layer, the three largest |h| of the stream over the store and the median |h|
-- reproduces: Sun et al. 2024, Figure 1 / 2 (top-1, top-2, top-3 magnitudes and the median, per layer)
-- param: source = resid   'resid' (residual stream, the paper's) or 'ffn' (FFN hidden values, the "massive weights" extension)
SELECT layer, max(abs(value), 3) AS top3, max(abs(value)) AS top1, median(median_abs) AS median_abs
FROM capture_topk
WHERE kind = $source AND rank <= 3
GROUP BY layer
ORDER BY layer
