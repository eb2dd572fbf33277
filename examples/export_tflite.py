"""Deploy the quickstart model: SavedModel for TF Serving, TFLite for devices.

Run:  python examples/export_tflite.py  [--model PATH] [--out-dir DIR]

Loads the quickstart model (training it first if it is not there), exports
a SavedModel and shows its serving signature as `saved_model_cli show`
prints it, then converts to TFLite with builtin ops only in four variants
(float32, float16, dynamic-range int8, full int8 calibrated on training
data) and prints, for each: size, agreement with the Keras model at real
tokens, validation accuracy, and whether every op is a builtin.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_encoder  # noqa: E402, F401  (registers the layers)
from keras_encoder import export  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quickstart  # noqa: E402

MODES = (None, "float16", "dynamic", "int8")


def show_signature(saved_model):
    """The serving signature, as `saved_model_cli show` prints it."""
    cli = shutil.which(
        "saved_model_cli", path=os.path.dirname(sys.executable)
    ) or shutil.which("saved_model_cli")
    if cli is None:
        print("(saved_model_cli not found; it comes with tensorflow)")
        return
    command = [
        cli,
        "show",
        "--dir",
        saved_model,
        "--tag_set",
        "serve",
        "--signature_def",
        "serving_default",
    ]
    print(
        "$ saved_model_cli show --dir",
        saved_model,
        "--tag_set serve --signature_def serving_default",
    )
    result = subprocess.run(command, capture_output=True, text=True)
    print(result.stdout.strip())


def tflite_predict(path, tokens, batch_size=256):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path).get_signature_runner()
    return np.concatenate(
        [
            runner(tokens=tokens[i : i + batch_size])["output_0"]
            for i in range(0, len(tokens), batch_size)
        ]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="artifacts/quickstart/a_before_b.keras"
    )
    parser.add_argument("--out-dir", default="artifacts/deploy")
    args = parser.parse_args(argv)

    if not os.path.exists(args.model):
        print(f"{args.model} not found: training the quickstart model first")
        quickstart.main(["--out-dir", os.path.dirname(args.model)])
    model = keras.saving.load_model(args.model)
    os.makedirs(args.out_dir, exist_ok=True)
    x_val, y_val = quickstart.make_dataset(2000, seed=1001)
    x_cal, _ = quickstart.make_dataset(512, seed=1002)

    saved_model = export.to_saved_model(
        model, os.path.join(args.out_dir, "saved_model")
    )
    print(f"SavedModel: {saved_model}")
    show_signature(saved_model)
    sm = export.verify(model, saved_model, x_val)
    print(f"SavedModel vs Keras: max |diff| {sm.max_abs_diff:.1e}\n")

    float_probs = model.predict(x_val, verbose=0)[:, 0]
    float_accuracy = np.mean((float_probs > 0.5) == y_val)
    rows = []
    for mode in MODES:
        path = os.path.join(args.out_dir, f"model_{mode or 'float32'}.tflite")
        calibration = None
        if mode == "int8":
            calibration = [x_cal[i : i + 32] for i in range(0, 512, 32)]
        start = time.perf_counter()
        export.to_tflite(
            model, path, quantize=mode, representative_data=calibration
        )
        seconds = time.perf_counter() - start
        result = export.verify(model, path, x_val)
        accuracy = np.mean((tflite_predict(path, x_val)[:, 0] > 0.5) == y_val)
        rows.append((mode or "float32", result, accuracy, seconds))

    print(
        "| TFLite | size | cosine vs Keras | max abs diff | accuracy "
        f"(Keras: {float_accuracy:.4f}) | builtin only | convert |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, result, accuracy, seconds in rows:
        print(
            f"| {name} | {result.size_bytes / 1024:.0f} KB | "
            f"{result.cosine:.6f} | {result.max_abs_diff:.1e} | "
            f"{accuracy:.4f} | {'yes' if result.builtin_only else 'no'} | "
            f"{seconds:.1f} s |"
        )
    float_ops = rows[0][1].ops
    print(
        f"\nfloat32 model ops ({sum(float_ops.values())}): "
        + ", ".join(f"{k} {v}" for k, v in sorted(float_ops.items()))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
