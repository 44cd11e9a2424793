-- title: Per layer, the three largest |h| of the stream over the store and the median |h|
-- reproduces: Sun et al. 2024, Figure 1 / 2 (top-1, top-2, top-3 magnitudes and the median, per layer)
-- param: source = resid   'resid' (residual stream, the paper's) or 'ffn' (FFN hidden values, the "massive weights" extension)
-- capture_layers: per kind and layer, max(abs(value), 3), max(abs(value)) and median(median_abs) over each row's
-- ranks 1 to 3 of the capture, computed once by the index (a scan of the capture grows with the store)
SELECT layer, top3, top1, median_abs
FROM capture_layers
WHERE kind = $source
ORDER BY layer
