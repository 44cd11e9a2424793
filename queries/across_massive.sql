-- title: Massive activations per model: the top magnitude, the dimensions they sit in, the first layer they appear at, and their share on the first token
-- reproduces: Sun et al. 2024, Figures 1-2 and §2, across models (stores with a residual-stream capture)
-- across: models
-- param: abs_min = index_info.abs_min   |h| must exceed this
-- param: ratio = index_info.ratio       and be at least this many times the sequence's median |h|
-- top_abs and top_layer: the largest |h| of the residual stream and its layer; median_abs: the median over the
-- layers of each layer's median |h| (capture_layers, the index's per-layer summary: a scan of the capture grows
-- with the store)
WITH m AS (SELECT * FROM massive_activations_at(abs_min := $abs_min, ratio := $ratio)),
     top AS (SELECT store, model, n_layers, max(top1) AS top_abs, arg_max(layer, top1) AS top_layer,
                    median(median_abs) AS median_abs
             FROM capture_layers WHERE kind = 'resid' GROUP BY ALL),
     per_dim AS (SELECT store, dim, count(*) AS n FROM m GROUP BY ALL),
     dims AS (SELECT store, list(dim ORDER BY n DESC, dim)[:5] AS top_dims FROM per_dim GROUP BY store),
     s AS (SELECT store, count(*) AS n_massive, count(DISTINCT dim) AS n_dims, min(layer) AS first_layer,
                  min(depth) AS first_depth, avg((pos = 0)::INT) AS share_first_position
           FROM m GROUP BY store)
SELECT top.store, top.model, top.n_layers, top.top_abs, top.top_layer, top.median_abs,
       coalesce(s.n_massive, 0) AS n_massive, coalesce(s.n_dims, 0) AS n_dims, dims.top_dims,
       s.first_layer, s.first_depth, s.share_first_position
FROM top LEFT JOIN s USING (store) LEFT JOIN dims USING (store)
ORDER BY top.n_layers, top.store
