"""Peak memory of an EncoderBlock by sequence length, on CPU, per backend.

Run:  python benchmarks/attention_memory.py [--lengths 512 1024 2048 4096]
          [--backends tensorflow jax torch] [--batch 1]

Each measurement runs in a fresh process with KERAS_BACKEND set: build one
block (width 256, 4 heads, FFN 1024, 25% padding), run a forward pass (or
a training step: loss, gradients, SGD update) once at sequence length 16 to
load everything, record the resident set, then run it at the measured
length and report the growth of the peak resident set (VmHWM) over that
baseline. Each backend runs the way it is used: TensorFlow in a
`tf.function`, JAX jitted (`stateless_call`), torch eagerly (forward under
`torch.no_grad()`).

The materialised attention path keeps a few float32 (batch, heads, S, S)
tensors alive at once (scores, masked scores, probabilities), so its growth
goes with S^2. The fused path (`flash_attention=None` on JAX and torch)
calls `keras.ops.dot_product_attention`: torch's CPU kernel is a flash
kernel that works in blocks of keys, so its memory grows with S; JAX's CPU
fallback materialises the scores too.
"""

import argparse
import json
import os
import subprocess
import sys

WIDTH, HEADS, FFN = 256, 4, 1024
BACKENDS = ("tensorflow", "jax", "torch")


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _steps(block, train):
    """A backend's (step(x, mask) -> output or loss), as users run it."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        optimizer = keras.optimizers.SGD(1e-3)

        @tf.function(reduce_retracing=True)
        def forward(x, mask):
            return block(x, mask=mask)

        @tf.function(reduce_retracing=True)
        def train_step(x, mask):
            with tf.GradientTape() as tape:
                out = block(x, mask=mask, training=True)
                loss = tf.reduce_mean(tf.square(out))
            grads = tape.gradient(loss, block.trainable_variables)
            optimizer.apply(grads, block.trainable_variables)
            return loss

        return train_step if train else forward
    if backend == "jax":
        import jax

        trainable = [v.value for v in block.trainable_variables]
        frozen = [v.value for v in block.non_trainable_variables]

        def loss_fn(weights, x, mask):
            out, _ = block.stateless_call(
                weights, frozen, x, mask=mask, training=True
            )
            return jax.numpy.mean(jax.numpy.square(out))

        @jax.jit
        def forward(x, mask):
            return block.stateless_call(trainable, frozen, x, mask=mask)[0]

        @jax.jit
        def train_step(x, mask):
            loss, grads = jax.value_and_grad(loss_fn)(trainable, x, mask)
            updated = [
                w - 1e-3 * g for w, g in zip(trainable, grads, strict=True)
            ]
            return loss, updated

        return train_step if train else forward
    import torch

    def forward(x, mask):
        with torch.no_grad():
            return block(x, mask=mask)

    def train_step(x, mask):
        loss = torch.mean(torch.square(block(x, mask=mask, training=True)))
        loss.backward()
        with torch.no_grad():
            for w in block.trainable_variables:
                w.value.sub_(1e-3 * w.value.grad)
                w.value.grad = None
        return loss.detach()

    return train_step if train else forward


def child(length, batch, train, flash_attention):
    """Runs in the measured process (KERAS_BACKEND set); prints JSON."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    import keras_encoder

    block = keras_encoder.EncoderBlock(
        HEADS, FFN, activation="gelu", flash_attention=flash_attention
    )
    block.build((None, None, WIDTH))
    step = _steps(block, train)

    def run(n):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(batch, n, WIDTH)).astype("float32")
        mask = np.arange(n)[None, :] < n - n // 4  # 25% padding
        mask = np.repeat(mask, batch, axis=0)
        return step(
            keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(mask)
        )

    run(16)
    baseline = _status_kib("VmRSS")
    out = run(length)
    if isinstance(out, tuple):  # JAX: (loss, updated weights)
        out = out[0]
    finite = bool(np.isfinite(keras.ops.convert_to_numpy(out)).all())
    peak = _status_kib("VmHWM")
    print(
        json.dumps({"growth_mib": (peak - baseline) / 1024, "finite": finite})
    )


def measure(length, batch=1, train=False, backend="tensorflow", flash=None):
    """{growth_mib, finite} of one fresh process."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            str(length),
            str(batch),
            str(int(train)),
            str(flash),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    if result.returncode:
        raise RuntimeError(f"{backend} child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192]
    )
    parser.add_argument(
        "--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--no-train", action="store_true", help="forward passes only"
    )
    args = parser.parse_args(argv)
    print(
        f"EncoderBlock width {WIDTH}, {HEADS} heads, FFN {FFN}, batch "
        f"{args.batch}, float32, CPU, 25% padding; growth of peak RSS over "
        "the process after a length-16 warm-up, MiB"
    )
    print(
        "\n| backend | attention path | seq | forward | training step | one "
        "(B, H, S, S) float32 tensor |"
    )
    print("|---|---|---|---|---|---|")
    results = []
    for backend in args.backends:
        paths = [("materialised", False)]
        if backend != "tensorflow":
            paths.append(("fused", None))
        for path, flash in paths:
            for length in args.lengths:
                forward = measure(length, args.batch, False, backend, flash)
                train = None
                if not args.no_train:
                    train = measure(length, args.batch, True, backend, flash)
                tensor = args.batch * HEADS * length * length * 4 / 2**20
                assert forward["finite"] and (train is None or train["finite"])
                train_mib = (
                    "-" if train is None else f"{train['growth_mib']:.0f}"
                )
                forward_mib = f"{forward['growth_mib']:.0f}"
                print(
                    f"| {backend} | {path} | {length} | {forward_mib} | "
                    f"{train_mib} | {tensor:.0f} |",
                    flush=True,
                )
                results.append(
                    {
                        "backend": backend,
                        "path": path,
                        "seq": length,
                        "forward_mib": forward["growth_mib"],
                        "train_mib": None
                        if train is None
                        else train["growth_mib"],
                    }
                )
    return results


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        flash = {"None": None, "True": True, "False": False}[sys.argv[5]]
        child(int(sys.argv[2]), int(sys.argv[3]), bool(int(sys.argv[4])), flash)
    else:
        main()
