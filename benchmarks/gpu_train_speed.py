"""GPU training speed and peak memory: keras_encoder against the anchors.

Run on a GPU machine (JAX with CUDA, keras-hub, optionally torch with CUDA;
TensorFlow is not needed and is never imported), from the repository root:

    KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false \\
        python benchmarks/gpu_train_speed.py [--configs A B] [--steps 10] \\
        [--flash-attention true|false|none] [--no-torch]

Smoke test on CPU (tiny sizes, torch on CPU; memory is "n/a" there), with
`--block-tensorflow` to make TensorFlow look absent as on the GPU machine:

    KERAS_BACKEND=jax python benchmarks/gpu_train_speed.py --tiny \\
        [--block-tensorflow]

Builds the same classifier three ways: `Embedding(30522, d,
mask_zero=True)`, then L post-LN encoder blocks (GELU, dropout 0), a masked
mean over the real tokens (`SentencePooling(pooling="mean")`) and
`Dense(2)`, from
  - keras_encoder `EncoderBlock(num_heads, intermediate_dim,
    activation="gelu")`,
  - keras-hub `TransformerEncoder(intermediate_dim, num_heads,
    activation="gelu")`,
  - `torch.nn.TransformerEncoder` (batch_first, GELU, bf16 autocast,
    `src_key_padding_mask`, the same pooling and head; eager, no
    `torch.compile`), when torch and CUDA are available.
The Keras models run on the JAX backend under the `mixed_bfloat16` policy,
compiled with `jit_compile=True`; all three train with Adam on token ids
whose rows end in 25-50% padding (zeros). Each model runs in its own
process: `predict_on_batch` (inference for torch) and then `train_on_batch`
(one Adam step for torch), each the median of --steps calls after
--warmup calls, and the process's peak device memory after each phase
(JAX: `memory_stats()["peak_bytes_in_use"]`, which cannot be reset, hence
predict first; torch: `torch.cuda.max_memory_allocated()`). A process that
fails (out of memory, say) shows its error in the table. Each process
also reports whether TensorFlow got imported (`tensorflow_imported`).

Configs: A = batch 32, seq 512, width 768, 12 heads, FFN 3072, 4 layers;
B = batch 2, seq 8192, width 768, 12 heads, FFN 3072, 2 layers.

Goals: our training step no slower than keras-hub's (keras-hub / ours >= 1)
and our peak memory at most 1.15x keras-hub's (ours / keras-hub <= 1.15).

Writes gpu_train_speed.json to --out (device, versions, configs, the
per-implementation medians and peaks) and prints a markdown table.
"""

import argparse
import importlib.metadata
import importlib.util
import inspect
import json
import math
import os
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "A": dict(batch=32, seq=512, width=768, heads=12, ffn=3072, layers=4),
    "B": dict(batch=2, seq=8192, width=768, heads=12, ffn=3072, layers=2),
}
TINY_CONFIGS = {
    "A": dict(batch=2, seq=16, width=32, heads=2, ffn=64, layers=1),
    "B": dict(batch=1, seq=64, width=32, heads=2, ffn=64, layers=1),
}
VOCAB = 30_522
TINY_VOCAB = 100
OURS = "keras_encoder"
IMPLEMENTATIONS = (OURS, "keras-hub", "torch")
TIME_GOAL = 1.0  # keras-hub ms / ours ms, at least
MEMORY_GOAL = 1.15  # ours GiB / keras-hub GiB, at most
PACKAGES = ("keras", "jax", "jaxlib", "keras-hub", "torch", "keras-encoder")
FLASH_CHOICES = {"true": True, "false": False, "none": None}


def config_for(name, tiny):
    """The sizes of config `name`, with the vocabulary size."""
    sizes = (TINY_CONFIGS if tiny else CONFIGS)[name]
    return dict(sizes, vocab=TINY_VOCAB if tiny else VOCAB)


def padded_tokens(c, seed=0):
    """(batch, seq) int32 ids in [1, vocab), each row ending in 25-50% 0s."""
    import numpy as np

    from keras_encoder.testing import padded_ids

    rng = np.random.default_rng(seed)
    seq = c["seq"]
    tokens = padded_ids(
        c["batch"],
        seq,
        c["vocab"],
        rng=rng,
        min_length=seq - seq // 2,
        max_length=seq - seq // 4,
    )
    labels = rng.integers(0, 2, size=(c["batch"],), dtype="int32")
    return tokens, labels


def median_ms(fn, steps, warmup):
    """Median wall time of `fn()` in ms; `fn` must wait for the device."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def block_tensorflow():
    """Makes TensorFlow look absent, as on the GPU machine.

    A None entry in `sys.modules` makes `import tensorflow` raise
    ModuleNotFoundError and `importlib.util.find_spec` return None.
    """
    for name in ("tensorflow", "tensorflow_text"):
        sys.modules.setdefault(name, None)


def tensorflow_imported():
    return sys.modules.get("tensorflow") is not None


def _keras_block(impl, c, our_kwargs):
    if impl == OURS:
        import keras_encoder

        accepted = inspect.signature(keras_encoder.EncoderBlock).parameters
        for name in our_kwargs:
            if name not in accepted:
                raise TypeError(f"EncoderBlock has no `{name}` argument")
        return keras_encoder.EncoderBlock(
            c["heads"], c["ffn"], activation="gelu", **our_kwargs
        )
    import keras_hub

    return keras_hub.layers.TransformerEncoder(
        c["ffn"], c["heads"], activation="gelu"
    )


def build_keras_model(impl, c, our_kwargs):
    """Embedding -> blocks -> masked mean -> Dense(2), compiled for JAX.

    `our_kwargs` go to keras_encoder's `EncoderBlock` only.
    """
    import keras

    import keras_encoder

    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(c["vocab"], c["width"], mask_zero=True)(tokens)
    for _ in range(c["layers"]):
        x = _keras_block(impl, c, our_kwargs)(x)  # implicit padding mask
    x = keras_encoder.SentencePooling(pooling="mean", normalize=False)(x)
    logits = keras.layers.Dense(2, dtype="float32")(x)
    model = keras.Model(tokens, logits)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    return model


def _jax_peak_gib():
    import jax

    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**30


def run_keras(impl, c, steps, warmup, our_kwargs):
    import jax
    import keras
    import numpy as np

    # No keras.utils.set_random_seed: it imports TensorFlow when installed.
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = build_keras_model(impl, c, our_kwargs)
    tokens, labels = padded_tokens(c)
    tokens, labels = jax.device_put(tokens), jax.device_put(labels)
    result = {
        "device": jax.devices()[0].device_kind,
        "params": model.count_params(),
        "keras_flash_attention": keras.config.is_flash_attention_enabled(),
    }
    result["predict_ms"] = median_ms(
        lambda: model.predict_on_batch(tokens), steps, warmup
    )
    result["predict_peak_gib"] = _jax_peak_gib()
    losses = []
    result["train_ms"] = median_ms(
        lambda: losses.append(model.train_on_batch(tokens, labels)),
        steps,
        warmup,
    )
    result["train_peak_gib"] = _jax_peak_gib()
    result["loss_finite"] = bool(np.isfinite(losses).all())
    return result


def _torch_classifier(torch, c):
    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(c["vocab"], c["width"])
            layer = torch.nn.TransformerEncoderLayer(
                c["width"],
                c["heads"],
                c["ffn"],
                dropout=0.0,
                activation="gelu",
                batch_first=True,
            )
            self.encoder = torch.nn.TransformerEncoder(layer, c["layers"])
            self.head = torch.nn.Linear(c["width"], 2)

        def forward(self, tokens):
            real = tokens != 0
            x = self.encoder(self.embedding(tokens), src_key_padding_mask=~real)
            weights = real.unsqueeze(-1).float()
            total = (x.float() * weights).sum(dim=1)
            pooled = total / weights.sum(dim=1).clamp(min=1.0)
            return self.head(pooled)

    return Classifier()


def run_torch(c, steps, warmup, tiny):
    import torch

    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif tiny:
        device = torch.device("cpu")  # smoke test of the code path only
    else:
        return {"skipped": "torch has no CUDA device"}
    # Under CUDA autocast torch leaves its fused inference path anyway; on
    # CPU that path does not see autocast and fails on bfloat16 inputs.
    if hasattr(torch.backends, "mha"):
        torch.backends.mha.set_fastpath_enabled(False)
    torch.manual_seed(0)
    model = _torch_classifier(torch, c).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    tokens, labels = padded_tokens(c)
    tokens = torch.from_numpy(tokens).to(device)
    labels = torch.from_numpy(labels).long().to(device)
    on_cuda = device.type == "cuda"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def sync():
        if on_cuda:
            torch.cuda.synchronize()

    def predict():
        model.eval()
        with torch.inference_mode(), autocast():
            model(tokens)
        sync()

    losses = []

    def train():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(tokens), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        sync()

    def peak_gib():
        return torch.cuda.max_memory_allocated() / 2**30 if on_cuda else None

    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    result = {
        "device": (
            torch.cuda.get_device_name() if on_cuda else "cpu (smoke test)"
        ),
        "params": sum(p.numel() for p in model.parameters()),
    }
    result["predict_ms"] = median_ms(predict, steps, warmup)
    result["predict_peak_gib"] = peak_gib()
    result["train_ms"] = median_ms(train, steps, warmup)
    result["train_peak_gib"] = peak_gib()
    result["loss_finite"] = all(map(math.isfinite, losses))
    return result


def child(args):
    """Runs in the measured process; prints one JSON line."""
    if args.block_tensorflow:
        block_tensorflow()
    impl = args.child
    c = config_for(args.configs[0], args.tiny)
    our_kwargs = {}
    if args.flash_attention is not None:
        our_kwargs["flash_attention"] = FLASH_CHOICES[args.flash_attention]
    try:
        if impl == "torch":
            result = run_torch(c, args.steps, args.warmup, args.tiny)
        else:
            result = run_keras(impl, c, args.steps, args.warmup, our_kwargs)
    except Exception as error:  # reported in the table, not raised
        message = str(error).strip().splitlines() or [""]
        result = {"error": f"{type(error).__name__}: {message[0][:300]}"}
    result["tensorflow_imported"] = tensorflow_imported()
    print(json.dumps(result), flush=True)
    return 0


def measure(impl, config_name, args):
    """The JSON result of one fresh child process, or {"error": ...}."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        impl,
        "--configs",
        config_name,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    if args.tiny:
        command.append("--tiny")
    if args.block_tensorflow:
        command.append("--block-tensorflow")
    if args.flash_attention is not None:
        command += ["--flash-attention", args.flash_attention]
    env = dict(os.environ, KERAS_BACKEND="jax")
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            timeout=args.child_timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.child_timeout} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = [line for line in done.stderr.splitlines() if line.strip()]
    reason = tail[-1][:300] if tail else "no output"
    return {"error": f"exit status {done.returncode}: {reason}"}


def versions():
    found = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


MEASURES = (
    # result key, label, how it compares with keras-hub, goal or None
    ("train_ms", "train step ms", "time", TIME_GOAL),
    ("predict_ms", "predict ms", "time", None),
    ("train_peak_gib", "peak GiB (train)", "memory", MEMORY_GOAL),
    ("predict_peak_gib", "peak GiB (predict)", "memory", None),
)
RATIO_NAMES = {"time": "keras-hub / ours", "memory": "ours / keras-hub"}


def versus_keras_hub(rows):
    """{key: {ratio, definition, goal, met}} for each measure with both."""
    out = {}
    for key, _, kind, goal in MEASURES:
        ours, hub = rows[OURS].get(key), rows["keras-hub"].get(key)
        if ours is None or hub is None:
            continue
        ratio = hub / ours if kind == "time" else ours / hub
        met = None
        if goal is not None:
            met = ratio >= goal if kind == "time" else ratio <= goal
        out[key] = {
            "ratio": ratio,
            "definition": RATIO_NAMES[kind],
            "goal": goal,
            "met": met,
        }
    return out


def _cell(result, key):
    if "error" in result:
        return "error (below)"
    if "skipped" in result:
        return "skipped"
    value = result.get(key)
    return "n/a" if value is None else f"{value:.2f}"


def print_table(results, ratios):
    print(
        "\n| config | measure | keras_encoder | keras-hub | torch "
        "| vs keras-hub | goal |"
    )
    print("|---|---|---|---|---|---|---|")
    for config_name, rows in results.items():
        for key, label, kind, goal in MEASURES:
            cells = " | ".join(_cell(rows[i], key) for i in IMPLEMENTATIONS)
            versus = ratios[config_name].get(key)
            ratio = "n/a" if versus is None else f"{versus['ratio']:.2f}"
            verdict = "-"
            if goal is not None:
                sign = ">=" if kind == "time" else "<="
                verdict = f"{sign} {goal}"
                if versus is not None:
                    verdict += ": met" if versus["met"] else ": MISSED"
            print(
                f"| {config_name} | {label} | {cells} "
                f"| {RATIO_NAMES[kind]} {ratio} | {verdict} |"
            )
    for config_name, rows in results.items():
        for impl, row in rows.items():
            for status in ("error", "skipped"):
                if status in row:
                    print(f"\n{config_name}, {impl}, {status}: {row[status]}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs", nargs="+", default=["A", "B"], choices=sorted(CONFIGS)
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default="artifacts/benchmarks/gpu")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="tiny sizes (batch 2, seq 16, width 32, ...) for a CPU check",
    )
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument(
        "--flash-attention",
        choices=sorted(FLASH_CHOICES),
        default=None,
        help="pass flash_attention=True/False/None to our EncoderBlock; "
        "by default the argument is not passed",
    )
    parser.add_argument(
        "--block-tensorflow",
        action="store_true",
        help="make `import tensorflow` fail in the children, as on a "
        "machine without it",
    )
    parser.add_argument(
        "--child-timeout",
        type=float,
        default=1800.0,
        help="seconds before a child process is stopped",
    )
    parser.add_argument(
        "--child", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    use_torch = not args.no_torch and importlib.util.find_spec("torch")
    results = {}
    for config_name in args.configs:
        rows = {}
        for impl in IMPLEMENTATIONS:
            if impl == "torch" and not use_torch:
                rows[impl] = {"skipped": "torch not run"}
                continue
            rows[impl] = measure(impl, config_name, args)
            print(f"config {config_name}, {impl}: {rows[impl]}", flush=True)
        results[config_name] = rows

    devices = {
        row["device"]
        for rows in results.values()
        for row in rows.values()
        if "device" in row
    }
    ratios = {n: versus_keras_hub(rows) for n, rows in results.items()}
    report = {
        "device": sorted(devices),
        "versions": versions(),
        "tiny": args.tiny,
        "steps": args.steps,
        "warmup": args.warmup,
        "flash_attention": args.flash_attention or "not passed",
        "policy": "mixed_bfloat16",
        "configs": {n: config_for(n, args.tiny) for n in args.configs},
        "goals": {
            "train_ms keras-hub / ours at least": TIME_GOAL,
            "train_peak_gib ours / keras-hub at most": MEMORY_GOAL,
        },
        "results": results,
        "versus_keras_hub": ratios,
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_train_speed.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)

    sizes = "; ".join(
        f"{n} = {report['configs'][n]}" for n in report["configs"]
    )
    print(
        f"\n{', '.join(report['device']) or 'no device'}; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v)
        + f"; mixed_bfloat16, median of {args.steps} after {args.warmup} "
        f"warm-up calls; our flash_attention: {report['flash_attention']}."
        f"\n{sizes}"
    )
    print_table(results, ratios)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
