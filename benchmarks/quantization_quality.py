"""Quantization quality of a random-weight 2-block encoder, per TFLite mode.

Run:  python benchmarks/quantization_quality.py [--peaks 1 6] [--debugger]

For each attention sharpness ("peak": query and key kernels multiplied by
it, so scores grow by its square) and each mode, prints the cosine and max
abs diff of the TFLite token states against float Keras at real tokens,
and the size. The `int8 (naive fill)` row converts the same model with the
masked scores filled with about -1e9 (what a constant additive or `where`
fill does), to show what the row-minimum fill of the attention
(`keras_encoder._attention.masked_softmax`) fixes. With `--debugger`,
TFLite's quantization debugger lists the tensors with the largest error
(RMSE / scale) in the full-int8 model.
"""

import argparse
import csv
import io
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_encoder  # noqa: E402
from keras_encoder import export  # noqa: E402
from keras_encoder.testing import padded_ids  # noqa: E402

VOCAB, LENGTH, WIDTH = 100, 32, 64


class NaiveFillAttention(keras_encoder.MultiHeadSelfAttention):
    fill_margin = 1e9  # masked scores at about -1e9


class NaiveFillBlock(keras_encoder.EncoderBlock):
    attention_class = NaiveFillAttention


def build(peak, seed=0, block_class=keras_encoder.EncoderBlock):
    keras.utils.set_random_seed(seed)
    ids = keras.Input((None,), dtype="int32", name="input_ids")
    x = keras.layers.Embedding(VOCAB, WIDTH, mask_zero=True)(ids)
    x = keras_encoder.PositionalEncoding(LENGTH)(x)
    for i in range(2):
        block = block_class(4, 2 * WIDTH, name=f"block_{i}")
        x = block(x)
        for dense in (block.attention.query_dense, block.attention.key_dense):
            dense.kernel.assign(dense.kernel * peak)
    return keras.Model(ids, x)


def tokens(count, seed):
    return padded_ids(count, LENGTH, VOCAB, seed=seed)


def debugger_report(model, calibration, top=8):
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([b] for b in calibration)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter,
            debug_dataset=lambda: ([b] for b in calibration[:8]),
        )
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    rows = list(csv.DictReader(io.StringIO(dump.getvalue())))
    for row in rows:
        scale = float(row["scale"]) or 1.0
        row["error"] = float(row["mean_squared_error"]) ** 0.5 / scale
    rows.sort(key=lambda r: -r["error"])
    print(f"\nlargest int8 errors (RMSE / scale), top {top}:")
    for row in rows[:top]:
        print(
            f"  {row['error']:6.2f}  {row['op_name']:<16} "
            f"{row['tensor_name'][:70]}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peaks", type=float, nargs="+", default=[1.0, 6.0])
    parser.add_argument("--debugger", action="store_true")
    args = parser.parse_args(argv)

    test_ids = tokens(64, seed=1)
    calibration = [tokens(8, seed=100 + i) for i in range(32)]
    print("| peak | mode | size | cosine | max abs diff |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for peak in args.peaks:
            model = build(peak)
            naive = build(peak, block_class=NaiveFillBlock)
            naive.set_weights(model.get_weights())
            cases = [
                (m, m, model) for m in (None, "float16", "dynamic", "int8")
            ]
            cases.append(("int8 (naive fill)", "int8", naive))
            for name, mode, exported in cases:
                path = export.to_tflite(
                    exported,
                    os.path.join(tmp, "model.tflite"),
                    quantize=mode,
                    representative_data=calibration,
                )
                result = export.verify(model, path, test_ids)
                print(
                    f"| {peak:g} | {name or 'float32'} | "
                    f"{result.size_bytes / 1024:.0f} KB | "
                    f"{result.cosine:.5f} | {result.max_abs_diff:.3f} |"
                )
            if args.debugger:
                debugger_report(model, calibration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
