"""The checks that need a GPU, in one short run (about 8 minutes on one H200),
so they can be rerun the moment a task is lent a device. Run by benchmarks/gpu_check.sh:

    bash benchmarks/gpu_check.sh prepare        # here: wheels the device lacks, into .gpu/
    device run: bash benchmarks/gpu_check.sh run  (carry .gpu; writes $OUT/gpu_check.json)

On a random OPT-125m-shaped model (seeded; the real GPT-2 BPE tokenizer) over real text
(benchmarks/_common.text_corpus), float32 on both devices:
1. masks from `--device cuda` against `--device cpu` on --check-tokens tokens: bits that
   differ per layer, and for each flip the CPU pre-activation (fc1 output, a hooked plain
   transformers forward): a flip of a near-zero pre-activation (|x| < --near, float32
   rounding in a different kernel order) is counted apart from any other, which would be a
   bug. The CPU store is also checked against the hooked forward itself (must be 0 flips).
2. ingest ÷ bare forward on cuda over --tokens tokens, paired in one run (bare base-model
   forward, then the ingest loop; CUDA synchronised), --rounds pairs, medians.
3. index ÷ forward: `actdb index` of that store (on cuda where the index has a --device
   setting, else on the CPU, said in the output) ÷ the bare forward of step 2; then the same
   index on the machine's CPU cores (the compiled kernels, `cpu_index_s`): which is cheaper there.
4. the mask encoder on the device machine's CPU cores: MB/s of packed masks per core (one
   thread) and over all cores (zarr's threads), on the chunks of the cuda store.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def token_rows(store: Path) -> tuple[np.ndarray, np.ndarray]:
    """(token ids in row order, start offset of each sequence + the end), from the token parts."""
    import pyarrow.parquet as pq

    parts = sorted(glob.glob(str(store / "tokens" / "*.parquet")))
    t = pq.read_table(parts[0]) if len(parts) == 1 else __import__("pyarrow").concat_tables(
        [pq.read_table(p) for p in parts])
    order = np.argsort(t.column("row").to_numpy())
    ids = t.column("token_id").to_numpy()[order]
    seq = t.column("seq").to_numpy()[order]
    return ids, np.concatenate([[0], np.flatnonzero(np.diff(seq)) + 1, [len(seq)]])


def bare_forward(model, ids: np.ndarray, offsets: np.ndarray, batch: int, device: str) -> float:
    """Wall seconds of a base-model forward over the full-length sequences (CUDA synchronised)."""
    import torch

    lengths = np.diff(offsets)
    keep = [i for i in range(len(lengths)) if lengths[i] == lengths[0]]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(keep), batch):
            rows = keep[lo:lo + batch]
            x = torch.from_numpy(np.stack([ids[offsets[i]:offsets[i + 1]] for i in rows]).astype(np.int64)).to(device)
            model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)
    sync()
    return (time.perf_counter() - t0) * offsets[-1] / sum(lengths[i] for i in keep)


def pre_activations(model_dir: Path, ids: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """fc1 outputs per layer, float32 [rows, d_ffn], from a plain hooked CPU forward."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    layers = model.model.decoder.layers
    out: list[list[np.ndarray]] = [[] for _ in layers]
    hooks = [l.fc1.register_forward_hook(lambda m, i, o, j=j: out[j].append(o.reshape(-1, o.shape[-1]).numpy().copy()))
             for j, l in enumerate(layers)]
    with torch.inference_mode():
        for s in range(len(offsets) - 1):
            x = torch.from_numpy(ids[offsets[s]:offsets[s + 1]].astype(np.int64))[None]
            model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)
    for h in hooks:
        h.remove()
    return [np.concatenate(o) for o in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=262144, help="tokens of the cuda ingest timed against the forward")
    ap.add_argument("--check-tokens", type=int, default=16384, help="tokens ingested on both devices and compared")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--near", type=float, default=1e-3, help="|pre-activation| under which a flip is rounding")
    ap.add_argument("--device", default="cuda", help="the device under test (cpu: a dry run of this script)")
    ap.add_argument("--work", default="/tmp/gpu_check")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    import actdb
    from _common import opt125m_random, text_corpus
    from actdb.index.build import build_index
    from actdb.settings import IndexSettings
    from actdb.store import codec
    from actdb.store.reader import StoreReader

    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (torch.cuda.is_available() is false)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if dev.startswith("cuda") else dev, "cpus": os.cpu_count(),
                 "codec_compiled": codec._jit() is not None}
    mdir = opt125m_random(work / "opt125m-random")
    corpus = text_corpus(work / "corpus.jsonl")

    def ingest(out: Path, device: str, tokens: int) -> "actdb.ingest.IngestSummary":
        return actdb.ingest.run(actdb.IngestSettings(
            model=str(mdir), corpus=(str(corpus),), out=str(out), seq_len=256, batch_size=args.batch_size,
            max_tokens=tokens, device=device, dtype="float32", offload="off", index=False, progress=False,
            overwrite=True))

    # 1. cuda masks against cpu masks, and the cpu store against a hooked forward
    t0 = time.perf_counter()
    cpu_store, gpu_store = work / "check-cpu", work / "check-cuda"
    ingest(cpu_store, "cpu", args.check_tokens)
    ingest(gpu_store, dev, args.check_tokens)
    ids, offsets = token_rows(cpu_store)
    pre = pre_activations(mdir, ids, offsets)
    a, b = StoreReader(cpu_store), StoreReader(gpu_store)
    flips = []
    for layer in a.manifest.layers:
        ma, mb = a.masks(layer), b.masks(layer)                                   # bool [rows, d_ffn]
        x = pre[layer]
        ref_diff = int((ma != (x > 0)).sum())
        r, c = np.nonzero(ma != mb)
        mag = np.abs(x[r, c])
        flips.append({"layer": int(layer), "cpu_vs_hooked_forward": ref_diff, "device_vs_cpu": int(r.size),
                      "near_zero": int((mag < args.near).sum()), "other": int((mag >= args.near).sum()),
                      "max_abs_pre_at_flip": float(mag.max()) if mag.size else 0.0})
    res["masks"] = {"tokens": int(a.n_tokens), "bits_per_layer": int(a.n_tokens) * int(a.manifest.d_ffn),
                    "near": args.near, "layers": flips, "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(res["masks"]), flush=True)

    # 2. ingest ÷ bare forward on cuda, paired
    model = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32).eval().to(dev).model
    store = work / "timed"
    ingest(store, dev, args.tokens)   # warm-up, and the token rows of the bare forward
    ids, offsets = token_rows(store)
    pairs = []
    for _ in range(args.rounds):
        fwd = bare_forward(model, ids, offsets, args.batch_size, dev)
        t0 = time.perf_counter()
        s = ingest(store, dev, args.tokens)
        pairs.append({"forward_s": fwd, "loop_s": s.forward_seconds, "ingest_s": time.perf_counter() - t0})
    med = lambda k: float(np.median([p[k] for p in pairs]))  # noqa: E731
    res["ingest"] = {"tokens": int(s.n_tokens), "pairs": pairs, "loop_over_forward": med("loop_s") / med("forward_s"),
                     "ingest_over_forward": med("ingest_s") / med("forward_s")}
    print(json.dumps(res["ingest"]), flush=True)
    del model
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()

    # 3. index ÷ forward
    on = dev if "device" in IndexSettings.__dataclass_fields__ else "cpu (the index has no device setting yet)"
    t0 = time.perf_counter()
    build_index(store, progress=False, force=True, **({"device": dev} if on == dev else {}))
    idx = time.perf_counter() - t0
    res["index"] = {"on": on, "index_s": idx, "index_over_forward": idx / med("forward_s")}
    if on != "cpu":   # the same index on this machine's cores (the compiled kernels): which is cheaper here
        t0 = time.perf_counter()
        build_index(store, progress=False, force=True, device="cpu")
        res["index"]["cpu_index_s"] = time.perf_counter() - t0
    print(json.dumps(res["index"]), flush=True)

    # 4. the encoder on this machine's cores
    st = StoreReader(store)
    chunks = []
    for layer in st.manifest.layers[:4]:
        packed = np.packbits(st.neuron_masks(layer, slice(None)), axis=1, bitorder="little")
        chunks += [np.ascontiguousarray(packed[r:r + 512, t:t + 4096]) for r in range(0, packed.shape[0], 512)
                   for t in range(0, packed.shape[1], 4096)]
    mb = sum(c.nbytes for c in chunks) / 1e6
    [codec.encode(c) for c in chunks[:2]]   # compile / warm
    c0 = time.process_time()
    for c in chunks:
        codec.encode(c)
    one = mb / (time.process_time() - c0)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count()) as ex:
        list(ex.map(codec.encode, chunks))
    res["encoder"] = {"MB": round(mb, 1), "fire_rate": float(np.mean([np.unpackbits(c).mean() for c in chunks[:8]])),
                      "MBps_per_core": round(one, 1), "MBps_all_cores": round(mb / (time.perf_counter() - t0), 1)}
    print(json.dumps(res["encoder"]), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
