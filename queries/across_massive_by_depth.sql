-- title: Per model and relative depth, the three largest |h| of the residual stream and the median |h|
-- reproduces: Sun et al. 2024, Figures 1-2 (top-1, top-2, top-3 magnitudes and the median per layer), across models
-- across: models
-- param: source = resid   'resid' (residual stream, the paper's) or 'ffn' (FFN hidden values, the "massive weights" extension)
SELECT store, model, n_layers, layer, depth, max(abs(value), 3) AS top3, max(abs(value)) AS top1,
       median(median_abs) AS median_abs
FROM capture_topk
WHERE kind = $source AND rank <= 3
GROUP BY ALL
ORDER BY n_layers, store, layer
