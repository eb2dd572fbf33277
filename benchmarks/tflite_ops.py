"""TFLite op counts of the encoder options, float32, builtin ops only.

Run:  python benchmarks/tflite_ops.py [--json PATH]

Each row is a model `tokens -> Embedding(mask_zero=True) -> EncoderBlock
(options) -> EncoderBlock(options)`, width 64, 4 heads, FFN 128, exported
with `export.to_tflite` (dynamic batch and sequence length); the last row
is the tiny ModernBERT checkpoint of tests/fixtures (4 layers, with
embeddings, final norm and pooling). The table gives the total op count,
what it adds to the 2017 block (two blocks' worth), the ops that differ,
and whether every op is a builtin.
"""

import argparse
import collections
import json
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_encoder  # noqa: E402
from keras_encoder import convert  # noqa: E402
from keras_encoder import export  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
CASES = {
    "2017 block (post-LN, relu MLP)": {},
    "pre-LN": {"norm_first": True},
    "geglu": {"feedforward": "geglu"},
    "swiglu + rms_norm": {"feedforward": "swiglu", "normalization": "rms_norm"},
    "no biases (use_bias=False)": {"use_bias": False},
    "rotary": {"rotary_max_wavelength": 10000.0},
    "rotary, half the features": {
        "rotary_max_wavelength": 10000.0,
        "rotary_fraction": 0.5,
    },
    "sliding_window=65": {"sliding_window": 65},
    "ALiBi attention_bias": "alibi",
    "ModernBERT-style (pre-LN, no biases, geglu, rotary, window)": {
        "norm_first": True,
        "use_bias": False,
        "feedforward": "geglu",
        "rotary_max_wavelength": 10000.0,
        "sliding_window": 65,
    },
}


def two_blocks(options):
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(100, 64, mask_zero=True)(tokens)
    kwargs = {}
    if options == "alibi":
        kwargs["attention_bias"] = keras_encoder.AlibiBias(4)(x)
        options = {}
    for _ in range(2):
        x = keras_encoder.EncoderBlock(4, 128, **options)(x, **kwargs)
    return keras.Model(tokens, x)


def count(model, directory, name):
    path = export.to_tflite(model, os.path.join(directory, name))
    described = export.describe_tflite(path)
    return collections.Counter(described["ops"]), described["builtin_only"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        base, _ = count(two_blocks({}), directory, "base.tflite")
        for i, (name, options) in enumerate(CASES.items()):
            ops, builtin = count(two_blocks(options), directory, f"{i}.tflite")
            delta = {
                op: ops[op] - base[op]
                for op in sorted(set(ops) | set(base))
                if ops[op] != base[op]
            }
            rows.append((name, sum(ops.values()), delta, builtin))
        model = convert.load_hf_modernbert(
            ROOT / "tests" / "fixtures" / "tiny_modernbert"
        )
        ops, builtin = count(model, directory, "modernbert.tflite")
        rows.append(
            (
                "tiny ModernBERT, 4 layers (whole model)",
                sum(ops.values()),
                dict(sorted(ops.items())),
                builtin,
            )
        )
    base_total = rows[0][1]
    print("| model | ops | vs 2017 | op changes | builtin only |")
    print("|---|---|---|---|---|")
    for name, total, delta, builtin in rows:
        changes = ", ".join(f"{op} {n:+d}" for op, n in delta.items())
        if name.startswith("tiny ModernBERT"):
            changes = ", ".join(f"{op} {n}" for op, n in delta.items())
        print(
            f"| {name} | {total} | {total - base_total:+d} | {changes} | "
            f"{'yes' if builtin else 'NO'} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
