-- title: Per model and relative depth, the three largest |h| of the residual stream and the median |h|
-- reproduces: Sun et al. 2024, Figures 1-2 (top-1, top-2, top-3 magnitudes and the median per layer), across models
-- across: models
-- param: source = resid   'resid' (residual stream, the paper's) or 'ffn' (FFN hidden values, the "massive weights" extension)
-- capture_layers: per kind and layer, the three largest |h| and the median |h|, computed once by the index
SELECT store, model, n_layers, layer, depth, top3, top1, median_abs
FROM capture_layers
WHERE kind = $source
ORDER BY n_layers, store, layer
