"""all-MiniLM-L6-v2 sentence embeddings per TFLite quantization mode, on
held-out real sentences: accuracy, integer coverage, size and latency.

Run:  python benchmarks/int8_quality.py [--model-dir DIR] [--modes ...]
          [--calibration 128] [--evaluation 200] [--rounds 20] [--json F]

Calibration: the first `--calibration` texts of the `calibration` half of
tests/fixtures/sentences.json (real English prose), as padded batches of
8. Evaluation: the first `--evaluation` texts of the disjoint `evaluation`
half, one by one (unpadded, 3 to 128 tokens). For each mode of
`export.QUANTIZE_MODES`: the file size; the sentence embedding's cosine
against float Keras (min and mean); nearest-neighbour agreement (the
share of sentences whose most similar other sentence is the same as
under float Keras); the share of FULLY_CONNECTED and BATCH_MATMUL
multiply-adds with int8 activations, counted on a 128-token sentence;
the matmuls' activation dtypes and the ops left in float
(`export.tflite_precision`); and latency at batch 1 (a sentence of the
median length) and batch 32 (padded to the longest), LiteRT with XNNPACK
on 2 threads, interleaved rounds (benchmarks/timing.py).
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import timing  # noqa: E402

from keras_encoder import convert  # noqa: E402
from keras_encoder import export  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import fetch_minilm  # noqa: E402
import semantic_search  # noqa: E402

THREADS = 2
MAX_TOKENS = 128
NAMES = {None: "float32"}


def machine():
    """CPU model, cores and whether TensorFlow's oneDNN is on."""
    model = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")
    return f"{model}, {os.cpu_count()} cores, TF_ENABLE_ONEDNN_OPTS={onednn}"


def matmul_macs(flatbuffer, inputs):
    """{activation dtype: multiply-adds} of the FULLY_CONNECTED and
    BATCH_MATMUL ops of `flatbuffer` run on `inputs` (shapes read after
    the run)."""
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.python import schema_py_generated as schema

    with warnings.catch_warnings():  # "for debugging purposes only"
        warnings.simplefilter("ignore", UserWarning)
        interpreter = Interpreter(
            model_content=flatbuffer, experimental_preserve_all_tensors=True
        )
    runner = interpreter.get_signature_runner()
    runner(**inputs)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    names = {code: name for name, code in vars(schema.BuiltinOperator).items()}
    macs = {}
    for op in model.subgraphs[0].operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        if name not in export.tflite.MATMUL_OPS:
            continue
        lhs, out = tensors[op.inputs[0]], tensors[op.outputs[0]]
        depth = lhs["shape"][-1]
        if getattr(op.builtinOptions, "adjX", False):
            depth = lhs["shape"][-2]
        dtype = np.dtype(lhs["dtype"]).name
        macs[dtype] = macs.get(dtype, 0) + int(np.prod(out["shape"])) * depth
    return macs


def nearest(embeddings):
    unit = embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(-1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model-dir", default=os.environ.get("KERAS_ENCODER_MINILM_DIR")
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=[NAMES.get(m, m) for m in export.QUANTIZE_MODES],
    )
    parser.add_argument("--calibration", type=int, default=128)
    parser.add_argument("--evaluation", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    model_dir = args.model_dir or fetch_minilm.fetch()

    tokenizer = semantic_search.load_tokenizer(model_dir)
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    texts = json.loads(
        (ROOT / "tests" / "fixtures" / "sentences.json").read_text()
    )
    calibration = [
        semantic_search.encode(tokenizer, texts["calibration"][i : i + 8])
        for i in range(0, args.calibration, 8)
    ]
    evaluation = [
        semantic_search.encode(tokenizer, [t])
        for t in texts["evaluation"][: args.evaluation]
    ]
    lengths = [x["input_ids"].shape[1] for x in evaluation]
    median = evaluation[int(np.argsort(lengths)[len(lengths) // 2])]
    longest = evaluation[int(np.argmax(lengths))]
    batches = {
        1: median,
        32: semantic_search.encode(tokenizer, texts["evaluation"][:32]),
    }

    model = convert.load_hf_bert(model_dir)
    reference = np.concatenate(
        [np.asarray(model(x)["sentence_embedding"]) for x in evaluation]
    )
    rows, runners = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.modes:
            mode = None if name == "float32" else name
            path = os.path.join(tmp, f"{name}.tflite")
            start = time.perf_counter()
            export.to_tflite(
                model, path, quantize=mode, representative_data=calibration
            )
            seconds = time.perf_counter() - start
            flatbuffer = pathlib.Path(path).read_bytes()
            runner = export.litert_runner(path, num_threads=THREADS)
            got = np.concatenate(
                [runner(**x)["sentence_embedding"] for x in evaluation]
            )
            cosines = (got * reference).sum(-1) / (
                np.linalg.norm(got, axis=-1)
                * np.linalg.norm(reference, axis=-1)
            )
            macs = matmul_macs(flatbuffer, longest)
            rows[name] = {
                "size_mb": len(flatbuffer) / 1e6,
                "convert_s": seconds,
                "cosine_min": float(cosines.min()),
                "cosine_mean": float(cosines.mean()),
                "nearest_kept": float(
                    np.mean(nearest(got) == nearest(reference))
                ),
                "int8_mac_share": float(
                    macs.get("int8", 0) / sum(macs.values())
                ),
                **export.tflite_precision(flatbuffer),
            }
            runners[name] = lambda inputs, r=runner: r(**inputs)[
                "sentence_embedding"
            ]
            print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)
        for batch, inputs in batches.items():
            times = timing.interleaved(runners, inputs, args.rounds, warmup=3)
            for name, t in times.items():
                rows[name][f"batch{batch}_ms"] = statistics.median(t) * 1e3

    print(
        f"\nall-MiniLM-L6-v2, {len(evaluation)} held-out sentences "
        f"({min(lengths)} to {max(lengths)} tokens, median "
        f"{int(np.median(lengths))}), calibrated on {args.calibration}; "
        f"{machine()}; LiteRT XNNPACK {THREADS} threads, median of "
        f"{args.rounds} interleaved rounds; batch 1 = "
        f"{median['input_ids'].shape[1]} tokens, batch 32 = "
        f"{batches[32]['input_ids'].shape[1]} (padded)\n"
    )
    print(
        "| TFLite | size | cosine min | cosine mean | nearest neighbour "
        "kept | int8 multiply-adds | matmul inputs | ops left in float | "
        "batch 1 ms | batch 32 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        matmuls = ", ".join(f"{d} {n}" for d, n in r["matmul_inputs"].items())
        floats = sum(r["float_ops"].values())
        print(
            f"| {name} | {r['size_mb']:.1f} MB | {r['cosine_min']:.4f} | "
            f"{r['cosine_mean']:.4f} | {r['nearest_kept']:.2f} | "
            f"{r['int8_mac_share']:.0%} | {matmuls} | {floats} | "
            f"{r['batch1_ms']:.2f} | {r['batch32_ms']:.1f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
