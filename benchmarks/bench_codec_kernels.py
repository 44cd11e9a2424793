"""The bitrows codec's compiled kernels (actdb/store/codec_kernels.py, numba) against its numpy
path (the code before them, kept as the reference), in one run, on chunks of the sparse
layers of the query store (bench_queries.py's OPT-125m-shaped store; target: layer 2, median
rate 0.4 %, and layer 9, median 2 %) at the store's default chunk shape, 512 neurons x
32,768 tokens (2 MiB packed).

    .venv/bin/python benchmarks/bench_codec_kernels.py [--tokens 65536] [--repeat 5]

Per path: encoding in MB/s of packed masks on one core (best CPU time of --repeat, process
time of this single thread), decoding a whole chunk, one row (one neuron's block) and 32
rows (an index unit's share), all as MB/s or microseconds; and whether the two paths wrote
the same bytes (they must: the kernels are the same format, bit for bit).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actdb.store import codec, codec_kernels  # noqa: E402
from bench_queries import layer_mask, layer_spec, stamp, token_ids  # noqa: E402

ROWS, TOKENS = 512, 32768


def best_cpu(fn, repeat: int) -> float:
    fn()   # compile / warm
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=65536, help="tokens of each layer (whole chunks of 32,768)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(stamp())
    ids, _, pos, perm = token_ids(args.tokens)
    for layer in (2, 9):
        spec = layer_spec(layer, perm)
        mask = layer_mask(spec, ids, pos, layer, 0, args.tokens)                   # bool [3072, tokens]
        packed = np.packbits(mask, axis=1, bitorder="little")
        chunks = [np.ascontiguousarray(packed[r:r + ROWS, t // 8:(t + TOKENS) // 8])
                  for r in range(0, packed.shape[0], ROWS) for t in range(0, args.tokens, TOKENS)]
        mb = sum(c.nbytes for c in chunks) / 1e6
        res, enc = {}, {}
        for name, jit in (("numpy", False), ("compiled", codec_kernels)):
            codec._JIT = jit
            enc[name] = [codec.encode(c) for c in chunks]
            e = enc[name]
            r = {"encode_MBps": mb / best_cpu(lambda: [codec.encode(c) for c in chunks], args.repeat),
                 "decode_chunk_MBps": mb / best_cpu(lambda: [codec.decode(x) for x in e], args.repeat),
                 "decode_1_row_us": 1e6 * best_cpu(lambda: [codec.decode(x, rows=(r0, r0 + 1)) for x in e
                                                            for r0 in (7, 250, 500)], args.repeat) / (3 * len(e)),
                 "decode_32_rows_us": 1e6 * best_cpu(lambda: [codec.decode(x, rows=(r0, r0 + 32)) for x in e
                                                              for r0 in (0, 240, 480)], args.repeat) / (3 * len(e))}
            res[name] = {k: round(v, 1) for k, v in r.items()}
        same = all(a == b for a, b in zip(enc["numpy"], enc["compiled"]))
        ratio = {k: round(res["compiled"][k] / res["numpy"][k] if "MBps" in k else res["numpy"][k] / res["compiled"][k], 2)
                 for k in res["numpy"]}
        print(json.dumps({"layer": layer, "tokens": args.tokens, "fire_rate": round(float(mask.mean()), 4),
                          "packed_MB": round(mb, 1), **res, "speedup": ratio, "bytes_identical": same}))


if __name__ == "__main__":
    main()
