"""Peak memory of an EncoderBlock by sequence length, on CPU.

Run:  python benchmarks/attention_memory.py [--lengths 512 1024 2048 4096]

Each measurement runs in a fresh process: build one block (width 256, 4
heads, FFN 1024) and a graph-mode forward pass (or training step), run it
once at sequence length 16 to load everything, record the resident set,
then run it at the measured length and report the growth of the peak
resident set (VmHWM) over that baseline. Attention keeps a few float32
(batch, heads, S, S) tensors alive at once (scores, masked scores,
probabilities), so the growth goes with S^2.
"""

import argparse
import json
import os
import subprocess
import sys

WIDTH, HEADS, FFN = 256, 4, 1024


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def child(length, batch, train):
    """Runs in the measured process; prints JSON."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_encoder

    block = keras_encoder.EncoderBlock(HEADS, FFN, activation="gelu")
    block.build((None, None, WIDTH))
    optimizer = keras.optimizers.SGD(1e-3)

    @tf.function(reduce_retracing=True)
    def forward(x, mask):
        return block(x, mask=mask)

    @tf.function(reduce_retracing=True)
    def train_step(x, mask):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(block(x, mask=mask, training=True)))
        grads = tape.gradient(loss, block.trainable_variables)
        optimizer.apply(grads, block.trainable_variables)
        return loss

    step = train_step if train else forward

    def run(n):
        rng = np.random.default_rng(0)
        x = tf.constant(rng.normal(size=(batch, n, WIDTH)).astype("float32"))
        mask = tf.constant(np.arange(n)[None, :] < n - n // 4)  # 25% pad
        mask = tf.repeat(mask, batch, axis=0)
        return step(x, mask)

    run(16)
    baseline = _status_kib("VmRSS")
    out = run(length)
    finite = bool(np.isfinite(keras.ops.convert_to_numpy(out)).all())
    peak = _status_kib("VmHWM")
    print(
        json.dumps({"growth_mib": (peak - baseline) / 1024, "finite": finite})
    )


def measure(length, batch=1, train=False):
    """{growth_mib, finite} of one fresh process."""
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            str(length),
            str(batch),
            str(int(train)),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096]
    )
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    print(
        f"EncoderBlock width {WIDTH}, {HEADS} heads, FFN {FFN}, batch "
        f"{args.batch}, float32, CPU; growth of peak RSS over the "
        "process after a length-16 warm-up"
    )
    print(
        "\n| seq | forward MiB | training step MiB | one (B, H, S, S) "
        "float32 tensor MiB |"
    )
    print("|---|---|---|---|")
    for length in args.lengths:
        forward = measure(length, args.batch, train=False)
        train = measure(length, args.batch, train=True)
        tensor = args.batch * HEADS * length * length * 4 / 2**20
        assert forward["finite"] and train["finite"]
        print(
            f"| {length} | {forward['growth_mib']:.0f} | "
            f"{train['growth_mib']:.0f} | {tensor:.0f} |"
        )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), int(sys.argv[3]), bool(int(sys.argv[4])))
    else:
        sys.exit(main())
