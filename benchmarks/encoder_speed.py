"""Encoder speed: keras_encoder against the anchors, in one process.

Run:  python benchmarks/encoder_speed.py [--configs A B] [--rounds N]
      (needs `pip install keras-hub`; torch and onnxruntime are optional)

Builds the same encoder stack (post-LN, GELU, no mask) from
  - keras_encoder `EncoderBlock`,
  - keras-hub `TransformerEncoder`,
  - a block of `keras.layers.MultiHeadAttention` + `Dense` +
    `LayerNormalization` ("keras MHA"),
  - `torch.nn.TransformerEncoder` with its inference fast path, if torch
    is installed,
and measures, interleaved (A B C, B C A, C A B, ...) after warm-up: the
forward pass in graph mode (`tf.function`, no XLA), with XLA, and as TFLite
(XNNPACK, 2 threads); a training step (`train_on_batch`, graph mode); and
batch 1 x seq 16 latency. A 2048 x 2048 float32 matmul in the same run
gives the peak that GF/s are compared with. Prints a table (median, min,
max, GF/s, % of peak, ratios of each anchor's median to ours), writes
JSON and a PNG bar chart to --out.

Configs: A = batch 8, seq 128, width 256, 4 heads, FFN 1024, 4 layers;
B = batch 16, seq 128, width 384, 12 heads, FFN 1536, 6 layers.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import timing  # noqa: E402

import keras_encoder  # noqa: E402
from keras_encoder import export  # noqa: E402

CONFIGS = {
    "A": dict(batch=8, seq=128, width=256, heads=4, ffn=1024, layers=4),
    "B": dict(batch=16, seq=128, width=384, heads=12, ffn=1536, layers=6),
}
THREADS = 2
OURS = "keras_encoder"


def forward_flops(batch, seq, width, heads, ffn, layers):
    """Multiply-adds x 2 of one forward pass (matmuls only)."""
    projections = 4 * seq * width * width
    attention = 2 * seq * seq * width
    feed_forward = 2 * seq * width * ffn
    return 2 * batch * layers * (projections + attention + feed_forward)


def build_ours(c):
    inputs = keras.Input((None, c["width"]))
    x = inputs
    for _ in range(c["layers"]):
        x = keras_encoder.EncoderBlock(c["heads"], c["ffn"], activation="gelu")(
            x
        )
    return keras.Model(inputs, x)


def build_keras_hub(c):
    import keras_hub

    inputs = keras.Input((None, c["width"]))
    x = inputs
    for _ in range(c["layers"]):
        x = keras_hub.layers.TransformerEncoder(
            c["ffn"], c["heads"], activation="gelu", layer_norm_epsilon=1e-5
        )(x)
    return keras.Model(inputs, x)


def build_keras_mha(c):
    inputs = keras.Input((None, c["width"]))
    x = inputs
    for _ in range(c["layers"]):
        attention = keras.layers.MultiHeadAttention(
            c["heads"], c["width"] // c["heads"]
        )(x, x)
        x = keras.layers.LayerNormalization(epsilon=1e-5)(x + attention)
        h = keras.layers.Dense(c["ffn"], activation="gelu")(x)
        x = keras.layers.LayerNormalization(epsilon=1e-5)(
            x + keras.layers.Dense(c["width"])(h)
        )
    return keras.Model(inputs, x)


BUILDERS = {
    OURS: build_ours,
    "keras-hub": build_keras_hub,
    "keras MHA": build_keras_mha,
}


def torch_runner(c):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(THREADS)
    layer = torch.nn.TransformerEncoderLayer(
        c["width"],
        c["heads"],
        c["ffn"],
        activation="gelu",
        batch_first=True,
    )
    model = torch.nn.TransformerEncoder(
        layer, c["layers"], enable_nested_tensor=False
    ).eval()

    def run(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return run


def graph_runner(model, jit_compile):
    fn = tf.function(
        lambda x: model(x, training=False),
        jit_compile=jit_compile,
        reduce_retracing=True,
    )
    return lambda x: fn(x).numpy()


def tflite_runner(model, directory, name):
    from ai_edge_litert.interpreter import Interpreter

    path = export.to_tflite(model, os.path.join(directory, f"{name}.tflite"))
    runner = Interpreter(
        model_path=path, num_threads=THREADS
    ).get_signature_runner()
    (input_name,) = runner.get_input_details()
    return lambda x: runner(**{input_name: x})


def train_runner(model):
    clone = keras.models.clone_model(model)
    clone.compile(optimizer="adam", loss="mse", jit_compile=False)

    def run(x):
        return clone.train_on_batch(x, x)

    return run


def matmul_peak(rounds=20, n=2048):
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    fn = tf.function(lambda: tf.matmul(a, b))
    times = timing.interleaved(
        {"matmul": lambda _: fn().numpy()}, None, rounds
    )["matmul"]
    return 2 * n**3 / statistics.median(times) / 1e9


def measure(config_name, rounds, directory):
    c = CONFIGS[config_name]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(c["batch"], c["seq"], c["width"])).astype("float32")
    small = rng.normal(size=(1, 16, c["width"])).astype("float32")
    keras.utils.set_random_seed(0)
    models = {name: build(c) for name, build in BUILDERS.items()}
    torch_run = torch_runner(c)
    modes = {}
    modes["graph"] = {n: graph_runner(m, False) for n, m in models.items()}
    modes["XLA"] = {n: graph_runner(m, True) for n, m in models.items()}
    modes["TFLite"] = {
        n: tflite_runner(m, directory, f"{config_name}_{n}".replace(" ", "_"))
        for n, m in models.items()
    }
    if torch_run is not None:
        modes["graph"]["torch"] = torch_run
    modes["train step"] = {n: train_runner(m) for n, m in models.items()}
    latency = dict(modes["TFLite"])
    latency = {f"{n} TFLite": r for n, r in latency.items()}
    latency[f"{OURS} graph"] = modes["graph"][OURS]
    if torch_run is not None:
        latency["torch"] = torch_run

    flops = forward_flops(**c)
    results = {}
    for mode, runners in modes.items():
        results[mode] = summarize(timing.interleaved(runners, x, rounds), flops)
    results["batch 1 x seq 16"] = summarize(
        timing.interleaved(latency, small, rounds * 3), None
    )
    return results


def summarize(times, flops):
    out = {}
    for name, t in times.items():
        median = statistics.median(t)
        out[name] = {
            "median_ms": median * 1e3,
            "min_ms": min(t) * 1e3,
            "max_ms": max(t) * 1e3,
            "gflops": flops / median / 1e9 if flops else None,
        }
    return out


def print_table(config_name, results, peak):
    print(f"\n### Config {config_name}: {CONFIGS[config_name]}\n")
    print(
        "| mode | implementation | median ms | min | max | GF/s | % peak "
        "| anchor / ours |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for mode, rows in results.items():
        ours = next(v for k, v in rows.items() if k.startswith(OURS))
        for name, r in rows.items():
            gflops = f"{r['gflops']:.1f}" if r["gflops"] else "-"
            share = f"{100 * r['gflops'] / peak:.0f}%" if r["gflops"] else "-"
            ratio = r["median_ms"] / ours["median_ms"]
            print(
                f"| {mode} | {name} | {r['median_ms']:.2f} | "
                f"{r['min_ms']:.2f} | {r['max_ms']:.2f} | {gflops} | "
                f"{share} | {ratio:.2f}x |"
            )


def plot(all_results, path):
    """One row of panels per config, one panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(all_results)
    modes = list(all_results[configs[0]])
    fig, axes = plt.subplots(
        len(configs),
        len(modes),
        figsize=(3.0 * len(modes), 2.4 * len(configs)),
        squeeze=False,
    )
    for row, config in enumerate(configs):
        for col, mode in enumerate(modes):
            ax = axes[row][col]
            rows = all_results[config][mode]
            names = list(rows)
            ax.barh(
                names,
                [rows[n]["median_ms"] for n in names],
                color=[
                    "tab:green" if n.startswith(OURS) else "tab:gray"
                    for n in names
                ],
            )
            ax.set_title(f"config {config}: {mode}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.invert_yaxis()
            if row == len(configs) - 1:
                ax.set_xlabel("median ms (lower is faster)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs", nargs="+", default=["A", "B"], choices=sorted(CONFIGS)
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default="artifacts/benchmarks/speed")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    all_results = {}
    with tempfile.TemporaryDirectory() as tmp:
        peak = matmul_peak()
        for name in args.configs:
            all_results[name] = measure(name, args.rounds, tmp)
        peak_end = matmul_peak()
    machine = platform.processor() or platform.machine()
    print(
        f"\n{machine}, {os.cpu_count()} cores, TF {tf.__version__}, Keras "
        f"{keras.__version__}, float32, {args.rounds} interleaved rounds. "
        f"Matmul peak (2048^2, graph): {peak:.1f} GF/s at start, "
        f"{peak_end:.1f} at end. 'anchor / ours' > 1: ours is faster."
    )
    for name, results in all_results.items():
        print_table(name, results, peak)
    with open(os.path.join(args.out, "encoder_speed.json"), "w") as f:
        json.dump(
            {
                "peak_gflops": [peak, peak_end],
                "configs": CONFIGS,
                "results": all_results,
            },
            f,
            indent=2,
        )
    plot(all_results, os.path.join(args.out, "encoder_speed.png"))
    print(f"\nwrote {args.out}/encoder_speed.json and encoder_speed.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
