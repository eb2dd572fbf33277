"""all-MiniLM-L6-v2 sentence-embedding latency per batch, every runtime in
one process, interleaved.

Run:  python benchmarks/minilm_latency.py [--model-dir DIR] [--rounds N]

Batches of real sentences (batch 1 and batch 32, padded to the longest,
tokenised beforehand so only the model is timed) go through: TFLite
float32, TFLite dynamic-range int8 and TFLite full int8 (LiteRT, XNNPACK,
2 threads), ONNX float32 (onnxruntime, 2 intra-op threads; when
tf2onnx and onnxruntime are installed), Keras compiled with XLA, and, when
installed, sentence-transformers on torch. Each round runs every runtime
once, in rotating order, after warm-up (benchmarks/timing.py); the table gives
medians, ratios against sentence-transformers (or TFLite float32 without
it), and each runtime's agreement with Keras float32 (min cosine over the
batch). Writes JSON to --out.
"""

import argparse
import json
import os
import platform
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import timing  # noqa: E402

from keras_encoder import convert  # noqa: E402
from keras_encoder import export  # noqa: E402

sys.path.insert(
    0,
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"),
)
import fetch_minilm  # noqa: E402
import semantic_search  # noqa: E402

THREADS = 2
SENTENCES = (semantic_search.CORPUS + semantic_search.QUERIES) * 2
SENTENCES = [f"{s} ({i})" for i, s in enumerate(SENTENCES)][:32]


def tflite_runner(path):
    runner = export.litert_runner(path, num_threads=THREADS)
    return lambda inputs: runner(**inputs)["sentence_embedding"]


def onnx_runner(model, path):
    try:
        import onnxruntime
    except ImportError:
        return None
    export.to_onnx(model, path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        path, options, providers=["CPUExecutionProvider"]
    )
    return lambda inputs: session.run(["sentence_embedding"], inputs)[0]


def keras_xla(model):
    @tf.function(jit_compile=True, reduce_retracing=True)
    def embed(inputs):
        return model(inputs, training=False)["sentence_embedding"]

    return lambda inputs: embed(inputs).numpy()


def sentence_transformers_runner(model_dir):
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    torch.set_num_threads(THREADS)
    model = SentenceTransformer(model_dir, device="cpu").eval()

    def embed(inputs):
        features = {
            k: torch.from_numpy(v.astype("int64")) for k, v in inputs.items()
        }
        with torch.inference_mode():
            return model(features)["sentence_embedding"].numpy()

    return embed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model-dir", default=os.environ.get("KERAS_ENCODER_MINILM_DIR")
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", default="artifacts/benchmarks/minilm")
    args = parser.parse_args(argv)
    model_dir = args.model_dir or fetch_minilm.fetch()
    os.makedirs(args.out, exist_ok=True)

    tokenizer = semantic_search.load_tokenizer(model_dir)
    batches = {
        1: semantic_search.encode(tokenizer, SENTENCES[:1]),
        32: semantic_search.encode(tokenizer, SENTENCES),
    }
    model = convert.load_hf_bert(model_dir)
    calibration = [
        semantic_search.encode(tokenizer, [s]) for s in semantic_search.CORPUS
    ]
    runtimes = {}
    for name, mode in (
        ("TFLite float32", None),
        ("TFLite dynamic int8", "dynamic"),
        ("TFLite full int8", "int8"),
    ):
        path = os.path.join(args.out, f"minilm_{mode or 'float32'}.tflite")
        export.to_tflite(
            model, path, quantize=mode, representative_data=calibration
        )
        runtimes[name] = tflite_runner(path)
    onnx = onnx_runner(model, os.path.join(args.out, "minilm.onnx"))
    if onnx is not None:
        runtimes["ONNX float32 (onnxruntime)"] = onnx
    runtimes["Keras XLA"] = keras_xla(model)
    st = sentence_transformers_runner(model_dir)
    if st is not None:
        runtimes["sentence-transformers (torch)"] = st
    anchor = (
        "sentence-transformers (torch)" if st is not None else "TFLite float32"
    )

    results = {}
    for batch, inputs in batches.items():
        reference = model(inputs)["sentence_embedding"].numpy()
        agreement = {}
        for name, run in runtimes.items():
            out = run(inputs)
            agreement[name] = float(((out * reference).sum(-1)).min())
        times = timing.interleaved(runtimes, inputs, args.rounds, warmup=3)
        results[batch] = {
            name: {
                "median_ms": statistics.median(t) * 1e3,
                "min_ms": min(t) * 1e3,
                "max_ms": max(t) * 1e3,
                "min_cosine_vs_keras": agreement[name],
            }
            for name, t in times.items()
        }

    seq = {b: int(batches[b]["input_ids"].shape[1]) for b in batches}
    machine = platform.processor() or platform.machine()
    print(
        f"\nMiniLM-L6 sentence embeddings, {machine}, {os.cpu_count()} "
        f"cores, {THREADS} threads, {args.rounds} interleaved rounds; ratio "
        f"= {anchor} median / this median (higher is faster)\n"
    )
    print(
        "| batch (seq) | runtime | median ms | min | max | ratio | "
        "cosine vs Keras |"
    )
    print("|---|---|---|---|---|---|---|")
    for batch, rows in results.items():
        base = rows[anchor]["median_ms"]
        for name, r in rows.items():
            print(
                f"| {batch} ({seq[batch]}) | {name} | {r['median_ms']:.2f} "
                f"| {r['min_ms']:.2f} | {r['max_ms']:.2f} | "
                f"{base / r['median_ms']:.2f}x | "
                f"{r['min_cosine_vs_keras']:.5f} |"
            )
    with open(os.path.join(args.out, "minilm_latency.json"), "w") as f:
        json.dump(
            {
                "anchor": anchor,
                "seq": seq,
                "rounds": args.rounds,
                "results": results,
            },
            f,
            indent=2,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
