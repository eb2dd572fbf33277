"""Encoder speed: keras_encoder against the anchors, oneDNN off and on.

Run:  python benchmarks/encoder_speed.py [--configs A B] [--rounds N]
          [--onednn off|on|both] [--modes graph xla tflite train latency]
          [--no-torch]
      (needs `pip install keras-hub`; torch is optional)

Builds the same encoder stack (post-LN, GELU, no mask) from
  - keras_encoder `EncoderBlock`,
  - keras-hub `TransformerEncoder`,
  - a block of `keras.layers.MultiHeadAttention` + `Dense` +
    `LayerNormalization` ("keras MHA"),
  - `torch.nn.TransformerEncoder` with its inference fast path, if torch
    is installed (and --no-torch is not given),
and measures, interleaved (A B C, B C A, C A B, ...) after warm-up: the
forward pass in graph mode (`tf.function`, no XLA; mode `graph`), with XLA
(`xla`), and as TFLite (XNNPACK, 2 threads; `tflite`); a training step
(`train_on_batch`, graph mode; `train`); and batch 1 x seq 16 latency
(`latency`). A 2048 x 2048 float32 matmul in the same run gives the peak
that GF/s are compared with.

TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` once, when it is imported, so each
oneDNN setting runs in its own child process (this script again, with the
variable set); this parent process never imports TensorFlow. It prints one
report naming the CPU, its vector/matrix instruction flags and the oneDNN
setting of each section (median, min, max, GF/s, % of peak, ratios of each
anchor's median to ours), and writes one JSON holding both settings and a
PNG bar chart to --out.

Configs: A = batch 8, seq 128, width 256, 4 heads, FFN 1024, 4 layers;
B = batch 16, seq 128, width 384, 12 heads, FFN 1536, 6 layers.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import timing  # noqa: E402  (sets OMP_WAIT_POLICY for the children too)

CONFIGS = {
    "A": dict(batch=8, seq=128, width=256, heads=4, ffn=1024, layers=4),
    "B": dict(batch=16, seq=128, width=384, heads=12, ffn=1536, layers=6),
}
# Command-line name -> report name, in report order.
MODES = {
    "graph": "graph",
    "xla": "XLA",
    "tflite": "TFLite",
    "train": "train step",
    "latency": "batch 1 x seq 16",
}
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
ONEDNN_VALUES = {"off": "0", "on": "1"}
# /proc/cpuinfo flags that decide which matmul kernels run.
CPU_FLAGS = (
    "fma",
    "avx2",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
THREADS = 2
OURS = "keras_encoder"


def cpu_info():
    """CPU model name and the flags of CPU_FLAGS it has (Linux only)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    name = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                if key in ("model name", "flags") and name and flags:
                    break
    except OSError:
        pass
    return {
        "model_name": name,
        "cores": os.cpu_count(),
        "flags": [flag for flag in CPU_FLAGS if flag in flags],
    }


# ---------------------------------------------------------------------------
# Child process: one oneDNN setting. TensorFlow and Keras are imported here,
# inside the functions, never in the parent.


def forward_flops(batch, seq, width, heads, ffn, layers):
    """Multiply-adds x 2 of one forward pass (matmuls only)."""
    projections = 4 * seq * width * width
    attention = 2 * seq * seq * width
    feed_forward = 2 * seq * width * ffn
    return 2 * batch * layers * (projections + attention + feed_forward)


def _stacked(c, block):
    """The (B, S, width) -> (B, S, width) model of `c["layers"]` blocks,
    each `block(x)`."""
    import keras

    inputs = keras.Input((None, c["width"]))
    x = inputs
    for _ in range(c["layers"]):
        x = block(x)
    return keras.Model(inputs, x)


def build_ours(c):
    import keras_encoder

    def block(x):
        return keras_encoder.EncoderBlock(
            c["heads"], c["ffn"], activation="gelu"
        )(x)

    return _stacked(c, block)


def build_keras_hub(c):
    import keras_hub

    def block(x):
        return keras_hub.layers.TransformerEncoder(
            c["ffn"], c["heads"], activation="gelu", layer_norm_epsilon=1e-5
        )(x)

    return _stacked(c, block)


def build_keras_mha(c):
    import keras

    def block(x):
        attention = keras.layers.MultiHeadAttention(
            c["heads"], c["width"] // c["heads"]
        )(x, x)
        x = keras.layers.LayerNormalization(epsilon=1e-5)(x + attention)
        h = keras.layers.Dense(c["ffn"], activation="gelu")(x)
        return keras.layers.LayerNormalization(epsilon=1e-5)(
            x + keras.layers.Dense(c["width"])(h)
        )

    return _stacked(c, block)


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
    import tensorflow as tf

    fn = tf.function(
        lambda x: model(x, training=False),
        jit_compile=jit_compile,
        reduce_retracing=True,
    )
    return lambda x: fn(x).numpy()


def tflite_runner(model, directory, name):
    from keras_encoder import export

    path = export.to_tflite(model, os.path.join(directory, f"{name}.tflite"))
    runner = export.litert_runner(path, num_threads=THREADS)
    (input_name,) = runner.get_input_details()
    return lambda x: runner(**{input_name: x})


def train_runner(model):
    import keras

    clone = keras.models.clone_model(model)
    clone.compile(optimizer="adam", loss="mse", jit_compile=False)

    def run(x):
        return clone.train_on_batch(x, x)

    return run


def matmul_peak(rounds=20, n=2048):
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    fn = tf.function(lambda: tf.matmul(a, b))
    times = timing.interleaved(
        {"matmul": lambda _: fn().numpy()}, None, rounds
    )["matmul"]
    return 2 * n**3 / statistics.median(times) / 1e9


def measure(config_name, modes, rounds, use_torch, directory):
    """{report mode name: {implementation: summary}} for one config."""
    import keras
    import numpy as np

    c = CONFIGS[config_name]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(c["batch"], c["seq"], c["width"])).astype("float32")
    small = rng.normal(size=(1, 16, c["width"])).astype("float32")
    keras.utils.set_random_seed(0)
    models = {name: build(c) for name, build in BUILDERS.items()}
    torch_run = torch_runner(c) if use_torch else None

    runners = {}
    if "graph" in modes or "latency" in modes:
        runners["graph"] = {
            n: graph_runner(m, False) for n, m in models.items()
        }
        if torch_run is not None:
            runners["graph"]["torch"] = torch_run
    if "xla" in modes:
        runners["xla"] = {n: graph_runner(m, True) for n, m in models.items()}
    if "tflite" in modes or "latency" in modes:
        runners["tflite"] = {
            n: tflite_runner(
                m, directory, f"{config_name}_{n}".replace(" ", "_")
            )
            for n, m in models.items()
        }
    if "train" in modes:
        runners["train"] = {n: train_runner(m) for n, m in models.items()}
    if "latency" in modes:
        latency = {f"{n} TFLite": r for n, r in runners["tflite"].items()}
        latency[f"{OURS} graph"] = runners["graph"][OURS]
        if torch_run is not None:
            latency["torch"] = torch_run
        runners["latency"] = latency

    flops = forward_flops(**c)
    results = {}
    for mode in (m for m in MODES if m in modes):
        if mode == "latency":
            times = timing.interleaved(runners[mode], small, rounds * 3)
            results[MODES[mode]] = summarize(times, None)
        else:
            times = timing.interleaved(runners[mode], x, rounds)
            results[MODES[mode]] = summarize(times, flops)
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


def run_child(args):
    """Measure every config under this process's oneDNN setting."""
    import keras
    import tensorflow as tf

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        peak = matmul_peak()
        for name in args.configs:
            print(f"  config {name} ...", file=sys.stderr, flush=True)
            results[name] = measure(
                name, args.modes, args.rounds, not args.no_torch, tmp
            )
        peak_end = matmul_peak()
    with open(args.child_out, "w") as f:
        json.dump(
            {
                "onednn_env": os.environ.get(ONEDNN_ENV),
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "peak_gflops": [peak, peak_end],
                "results": results,
            },
            f,
        )
    return 0


# ---------------------------------------------------------------------------
# Parent process: one child per oneDNN setting, then one report.


def run_setting(setting, args, directory):
    """Run this script in a child with oneDNN `setting`; its results."""
    out = os.path.join(directory, f"{setting}.json")
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--configs",
        *args.configs,
        "--modes",
        *args.modes,
        "--rounds",
        str(args.rounds),
        "--child-out",
        out,
    ]
    if args.no_torch:
        command.append("--no-torch")
    env = dict(os.environ, **{ONEDNN_ENV: ONEDNN_VALUES[setting]})
    print(
        f"measuring with oneDNN {setting} ({ONEDNN_ENV}="
        f"{ONEDNN_VALUES[setting]}) in a child process ...",
        file=sys.stderr,
        flush=True,
    )
    subprocess.run(command, env=env, check=True)
    with open(out) as f:
        return json.load(f)


def setting_title(setting):
    return f"oneDNN {setting} ({ONEDNN_ENV}={ONEDNN_VALUES[setting]})"


def print_table(title, config_name, results, peak):
    print(f"\n### {title}, config {config_name}: {CONFIGS[config_name]}\n")
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


def print_summary(settings):
    """keras-hub / ours per config and mode, one column per setting."""
    names = list(settings)
    print("\n### keras-hub / ours (median ratio, > 1: ours is faster)\n")
    print("| config | mode | " + " | ".join(map(setting_title, names)) + " |")
    print("|---|---|" + "---|" * len(names))
    first = settings[names[0]]["results"]
    for config, modes in first.items():
        for mode in modes:
            cells = []
            for setting in names:
                rows = settings[setting]["results"][config][mode]
                ours = next(v for k, v in rows.items() if k.startswith(OURS))
                hub = next(
                    (v for k, v in rows.items() if k.startswith("keras-hub")),
                    None,
                )
                cells.append(
                    f"{hub['median_ms'] / ours['median_ms']:.2f}x"
                    if hub
                    else "-"
                )
            print(f"| {config} | {mode} | " + " | ".join(cells) + " |")


def plot(settings, path):
    """One row of panels per (setting, config), one panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (setting, config, results)
        for setting, data in settings.items()
        for config, results in data["results"].items()
    ]
    modes = list(panels[0][2])
    fig, axes = plt.subplots(
        len(panels),
        len(modes),
        figsize=(3.0 * len(modes), 2.4 * len(panels)),
        squeeze=False,
    )
    for row, (setting, config, results) in enumerate(panels):
        for col, mode in enumerate(modes):
            ax = axes[row][col]
            rows = results[mode]
            names = list(rows)
            ax.barh(
                names,
                [rows[n]["median_ms"] for n in names],
                color=[
                    "tab:green" if n.startswith(OURS) else "tab:gray"
                    for n in names
                ],
            )
            ax.set_title(
                f"oneDNN {setting}, config {config}: {mode}", fontsize=8
            )
            ax.tick_params(labelsize=7)
            ax.invert_yaxis()
            if row == len(panels) - 1:
                ax.set_xlabel("median ms (lower is faster)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(args, cpu, settings):
    any_setting = next(iter(settings.values()))
    flags = ", ".join(cpu["flags"]) or "none of " + ", ".join(CPU_FLAGS)
    print(
        f"\nCPU: {cpu['model_name']}, {cpu['cores']} cores; flags: {flags}."
        f"\nTF {any_setting['tensorflow']}, Keras {any_setting['keras']}, "
        f"float32, {args.rounds} interleaved rounds. 'anchor / ours' > 1: "
        "ours is faster."
    )
    for setting, data in settings.items():
        peak, peak_end = data["peak_gflops"]
        print(
            f"\n## {setting_title(setting)}\n\nMatmul peak (2048^2, graph): "
            f"{peak:.1f} GF/s at start, {peak_end:.1f} at end."
        )
        for name, results in data["results"].items():
            print_table(setting_title(setting), name, results, peak)
    if len(settings) > 1:
        print_summary(settings)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs", nargs="+", default=["A", "B"], choices=sorted(CONFIGS)
    )
    parser.add_argument(
        "--modes", nargs="+", default=list(MODES), choices=list(MODES)
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--onednn",
        choices=["off", "on", "both"],
        default="both",
        help="oneDNN setting(s), each in its own child process",
    )
    parser.add_argument(
        "--no-torch", action="store_true", help="leave out torch"
    )
    parser.add_argument("--out", default="artifacts/benchmarks/speed")
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_out:
        return run_child(args)

    os.makedirs(args.out, exist_ok=True)
    cpu = cpu_info()
    names = ["off", "on"] if args.onednn == "both" else [args.onednn]
    with tempfile.TemporaryDirectory() as tmp:
        settings = {name: run_setting(name, args, tmp) for name in names}
    report(args, cpu, settings)
    with open(os.path.join(args.out, "encoder_speed.json"), "w") as f:
        json.dump(
            {
                "cpu": cpu,
                "rounds": args.rounds,
                "configs": {name: CONFIGS[name] for name in args.configs},
                "onednn": {
                    name: {"env": f"{ONEDNN_ENV}={ONEDNN_VALUES[name]}", **d}
                    for name, d in settings.items()
                },
            },
            f,
            indent=2,
        )
    plot(settings, os.path.join(args.out, "encoder_speed.png"))
    print(f"\nwrote {args.out}/encoder_speed.json and encoder_speed.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
