"""Quickstart: a small Transformer-encoder classifier, trained, saved, reloaded.

The task needs both attention and padding: each sequence (length 6 to 24,
zero-padded to 24) holds token A and token B once among random filler
tokens; the label says whether A comes before B. A bag of words cannot
solve it (both tokens are always present); the model must relate the two
positions.

Run:  python examples/quickstart.py  [--epochs N] [--out-dir DIR]

It trains with `fit`, checks the validation accuracy against a bar, saves
the model to `.keras`, reloads it in this process, checks the predictions
are identical, and draws the attention of one example to a PNG.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_encoder  # noqa: E402

VOCAB = 32
TOKEN_A, TOKEN_B = 1, 2  # 0 is padding; filler tokens are 3 .. VOCAB - 1
MAX_LENGTH = 24
ACCURACY_BAR = 0.95


def make_dataset(num_examples, seed):
    """Token ids (N, MAX_LENGTH) with zero padding, and 0/1 labels."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((num_examples, MAX_LENGTH), dtype="int32")
    labels = np.zeros(num_examples, dtype="int32")
    for i in range(num_examples):
        length = rng.integers(6, MAX_LENGTH + 1)
        tokens[i, :length] = rng.integers(3, VOCAB, size=length)
        pos_a, pos_b = rng.choice(length, size=2, replace=False)
        tokens[i, pos_a], tokens[i, pos_b] = TOKEN_A, TOKEN_B
        labels[i] = int(pos_a < pos_b)
    return tokens, labels


def build_model(width=64, num_heads=4, num_blocks=2):
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCAB, width, mask_zero=True)(tokens)
    x = keras_encoder.PositionalEncoding(MAX_LENGTH, name="positions")(x)
    for i in range(num_blocks):
        x, _ = keras_encoder.EncoderBlock(
            num_heads=num_heads,
            intermediate_dim=2 * width,
            dropout=0.1,
            name=f"block_{i}",
        )(x, return_attention_scores=True)
    x = keras.layers.GlobalAveragePooling1D()(x)  # masked mean over tokens
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(tokens, outputs, name="a_before_b")


def attention_model(model, block="block_1"):
    """A model from the same layers that outputs one block's attention."""
    return keras.Model(model.input, model.get_layer(block).output[1])


def plot_attention(model, tokens, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    length = int((tokens != 0).sum())
    scores = attention_model(model).predict(tokens[None], verbose=0)[0]
    names = [{TOKEN_A: "A", TOKEN_B: "B"}.get(t, str(t)) for t in tokens]
    heads = scores.shape[0]
    fig, axes = plt.subplots(1, heads, figsize=(3.2 * heads, 3.6))
    for h, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(scores[h, :length, :length], cmap="viridis", vmin=0)
        ax.set_title(f"head {h}")
        ax.set_xticks(range(length), names[:length], fontsize=6, rotation=90)
        ax.set_yticks(range(length), names[:length], fontsize=6)
        ax.set_xlabel("key")
    np.atleast_1d(axes)[0].set_ylabel("query")
    order = (
        "A before B" if names.index("A") < names.index("B") else ("B before A")
    )
    fig.suptitle(
        f"Attention of block_1 on one example ({order}); padded "
        "positions are not shown: they get zero"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-size", type=int, default=8000)
    parser.add_argument("--out-dir", default="artifacts/quickstart")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accuracy-bar", type=float, default=ACCURACY_BAR)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.out_dir, exist_ok=True)
    x_train, y_train = make_dataset(args.train_size, seed=args.seed)
    x_val, y_val = make_dataset(2000, seed=args.seed + 1)

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        batch_size=64,
        epochs=args.epochs,
        verbose=2 if os.environ.get("CI") else 1,
    )
    _, accuracy = model.evaluate(x_val, y_val, verbose=0)
    print(f"validation accuracy: {accuracy:.4f} (bar {args.accuracy_bar})")

    path = os.path.join(args.out_dir, "a_before_b.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    same = np.array_equal(
        model.predict(x_val, verbose=0), reloaded.predict(x_val, verbose=0)
    )
    print(f"saved {path}; reloaded predictions identical: {same}")

    heatmap = os.path.join(args.out_dir, "attention.png")
    plot_attention(reloaded, x_val[0], heatmap)
    print(f"attention heat-map: {heatmap}")
    print(f"total time: {time.perf_counter() - start:.0f} s")
    if not same or accuracy < args.accuracy_bar:
        print("FAILED: reload mismatch or accuracy below the bar")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
