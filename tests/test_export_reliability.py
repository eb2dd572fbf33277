"""Export under hostile input: Sequential and subclassed models, file
modes under any umask, int64 ids, paths through files, JAX tracing."""

import contextlib
import os
import re
import stat
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_encoder
from keras_encoder import cli
from keras_encoder import export
from keras_encoder.testing import padded_ids

pytestmark = pytest.mark.slow

VOCAB = 40


def sequential_encoder():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(VOCAB, 8, mask_zero=True),
            keras_encoder.EncoderBlock(2, 8),
            keras_encoder.SentencePooling(),
        ]
    )


def tiny_model():
    """ids -> Embedding: the cheapest model to export."""
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32", name="input_ids")
    return keras.Model(ids, keras.layers.Embedding(VOCAB, 4)(ids))


@contextlib.contextmanager
def umask(mask):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_sequential_model_exports_everywhere(tmp_path):
    model = sequential_encoder()
    ids = padded_ids(8, 6, VOCAB, seed=1, full_rows=[0])
    (name,) = export.input_names(model)
    batches = export.calibration_batches(model, ids)
    assert [sorted(b) for b in batches] == [[name]]
    embedding = model.layers[0].name  # "embedding_<n>" after other tests
    assert export.vocabularies(model) == {name: (embedding, VOCAB)}
    paths = [
        export.to_saved_model(model, tmp_path / "saved_model"),
        export.to_onnx(model, tmp_path / "m.onnx"),
    ]
    for quantize in export.QUANTIZE_MODES:
        paths.append(
            export.to_tflite(
                model,
                tmp_path / f"{quantize}.tflite",
                quantize=quantize,
                representative_data=ids,
            )
        )
    for path in paths:
        result = export.verify(model, path, ids[:3])
        # Parity is for the float artifacts; int8 of a width-8 model only
        # has to run (its accuracy bars are in test_export.py).
        assert "int8" in str(path) or result.cosine > 0.99, result
        assert np.isfinite(result.max_abs_diff), result


def test_cli_exports_a_saved_sequential_model(tmp_path, capsys):
    model_file = tmp_path / "seq.keras"
    sequential_encoder().save(model_file)
    np.save(tmp_path / "calibration.npy", padded_ids(8, 4, VOCAB, seed=2))
    with umask(0o022):
        code = cli.main(
            [
                "export",
                str(model_file),
                "--tflite",
                str(tmp_path / "m.tflite"),
                "--quantize",
                "int8",
                "--calibration",
                str(tmp_path / "calibration.npy"),
                "--seq-len",
                "4",
            ]
        )
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [r[-1] for r in rows] == ["yes", "yes"]
    assert min(float(r[-2]) for r in rows) > 0.95  # cosine
    # The CLI stages through the same `Staging`: a plain write's mode.
    assert mode(tmp_path / "m.tflite") == 0o644


@keras.saving.register_keras_serializable(package="test_export_reliability")
class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embedding = keras.layers.Embedding(VOCAB, 4)

    def call(self, ids):
        return self.embedding(ids)


def test_subclassed_model_is_refused_up_front(tmp_path):
    model = Subclassed()
    ids = padded_ids(2, 3, VOCAB)
    model(ids)
    message = (
        r"Received an invalid value for argument `model`: expected a "
        r"Functional or Sequential model with symbolic inputs; a subclassed "
        r"model has no symbolic inputs, .* wrap it, .*keras\.Model\(inputs, "
        r"model\(inputs\)\).* Received: model=Subclassed"
    )
    calls = [
        lambda: export.to_saved_model(model, tmp_path / "sm"),
        lambda: export.to_tflite(model, tmp_path / "m.tflite"),
        lambda: export.to_onnx(model, tmp_path / "m.onnx"),
        lambda: export.calibration_batches(model, ids),
        lambda: export.verify(model, tmp_path / "m.tflite", ids),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(ValueError, match=r"without `keras.Input`"):
        export.to_tflite(
            keras.Sequential([keras.layers.Embedding(VOCAB, 4)]),
            tmp_path / "m.tflite",
        )
    assert os.listdir(tmp_path) == []


def test_cli_refuses_a_saved_subclassed_model_in_one_line(tmp_path, capsys):
    model = Subclassed()
    model(padded_ids(2, 3, VOCAB))
    path = tmp_path / "sub.keras"
    model.save(path)
    target = tmp_path / "m.tflite"
    assert cli.main(["export", str(path), "--tflite", str(target)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert re.fullmatch(
        r"keras-encoder: error: .*sub\.keras: Received an invalid value for "
        r"argument `model`: expected a Functional or Sequential model .*"
        r"Received: model=Subclassed",
        line,
    )
    assert not target.exists()


def _check_tree(root, mask):
    """Every directory under `root` (itself included) is 0777 & ~mask and
    every file 0666 & ~mask."""
    assert mode(root) == 0o777 & ~mask
    for parent, dirs, files in os.walk(root):
        for d in dirs:
            assert mode(os.path.join(parent, d)) == 0o777 & ~mask, d
        for f in files:
            assert mode(os.path.join(parent, f)) == 0o666 & ~mask, f


@pytest.mark.parametrize(
    "mask", [0o022, 0o077, 0o002], ids=["022", "077", "002"]
)
def test_artifacts_get_the_modes_of_a_plain_write(mask, tmp_path):
    model = tiny_model()
    with umask(mask):
        tflite = export.to_tflite(model, tmp_path / "m.tflite")
        onnx = export.to_onnx(model, tmp_path / "m.onnx")
        saved_model = export.to_saved_model(model, tmp_path / "sm")
    assert mode(tflite) == mode(onnx) == 0o666 & ~mask
    _check_tree(saved_model, mask)


def test_replaced_artifacts_keep_their_mode(tmp_path):
    model = tiny_model()
    with umask(0o022):
        paths = {
            "tflite": export.to_tflite(model, tmp_path / "m.tflite"),
            "onnx": export.to_onnx(model, tmp_path / "m.onnx"),
            "saved_model": export.to_saved_model(model, tmp_path / "sm"),
        }
    os.chmod(paths["tflite"], 0o640)
    with umask(0o077):  # a stricter umask does not matter when replacing
        export.to_tflite(model, paths["tflite"])
        export.to_onnx(model, paths["onnx"])
        export.to_saved_model(model, paths["saved_model"])
    assert mode(paths["tflite"]) == 0o640
    assert mode(paths["onnx"]) == 0o644
    assert mode(paths["saved_model"]) == 0o755


def test_verify_casts_integer_ids_and_refuses_floats(tmp_path):
    model = tiny_model()
    ids = padded_ids(2, 5, VOCAB, seed=3).astype("int64")  # NumPy's default
    paths = [
        export.to_tflite(model, tmp_path / "m.tflite"),
        export.to_onnx(model, tmp_path / "m.onnx"),
        export.to_saved_model(model, tmp_path / "sm"),
    ]
    for path in paths:
        assert export.verify(model, path, ids).max_abs_diff == 0.0
        as_lists = {"input_ids": ids.tolist()}
        assert export.verify(model, path, as_lists).max_abs_diff == 0.0
        with pytest.raises(
            TypeError,
            match=r"Received an invalid value for argument `inputs`: "
            r"expected integer values for input 'input_ids' \(int32\); "
            r"floats are not cast to ids silently\. Received: dtype=float64",
        ):
            export.verify(model, path, ids.astype("float64"))
    with pytest.raises(
        ValueError,
        match=r"argument `inputs`: expected values that fit int32 for input "
        r"'input_ids'\. Received: values from 0 to 4294967296",
    ):
        export.verify(model, paths[0], np.array([[0, 2**32]]))


def test_path_through_a_file_is_not_a_directory(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    model = tiny_model()
    for path in ("notes.txt/m.tflite", "notes.txt/sub/m.tflite"):
        with pytest.raises(
            NotADirectoryError,
            match=r"Cannot write a TFLite model to '.*notes\.txt/.*m\.tflite"
            r"': '.*notes\.txt' is not a directory",
        ):
            export.to_tflite(model, tmp_path / path)
    with pytest.raises(FileNotFoundError, match=r"directory .* not exist"):
        export.to_saved_model(model, tmp_path / "missing" / "sm")
    target = str(tmp_path / "notes.txt" / "m.tflite")
    model_file = tmp_path / "model.keras"
    model.save(model_file)
    assert cli.main(["export", str(model_file), "--tflite", target]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"keras-encoder: error: --tflite {target}: "
        f"{str(tmp_path / 'notes.txt')!r} is not a directory"
    ]
    assert sorted(os.listdir(tmp_path)) == ["model.keras", "notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


# Exports under another backend, one error line per attempt.
OTHER_BACKEND_EXPORT = """
import os, sys, keras, keras_encoder
from keras_encoder import export
from keras_encoder.testing import padded_ids
ids = keras.Input((None,), dtype="int32", name="ids")
x = keras.layers.Embedding(40, 8, mask_zero=True)(ids)
plain = keras.Model(ids, keras_encoder.EncoderBlock(2, 8)(x))
positioned = keras_encoder.PositionalEncoding(16)(x)
positions = keras.Model(ids, keras_encoder.EncoderBlock(2, 8)(positioned))
batches = [{"ids": padded_ids(2, 4, 40, seed=0)}]
for attempt in (
    lambda: export.to_saved_model(positions, os.path.join(sys.argv[1], "sm")),
    lambda: export.to_tflite(
        plain, os.path.join(sys.argv[1], "m.tflite"), "int8", batches
    ),
):
    try:
        attempt()
        print("exported")
    except ValueError as error:
        print(error)
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_export_under_other_backends_is_refused_with_the_cause(
    backend, tmp_path
):
    """JAX: a layer jax2tf cannot trace is named; integer TFLite, whose
    model aborts LiteRT's interpreter, is refused. torch: no TensorFlow
    graph."""
    result = subprocess.run(
        [sys.executable, "-c", OTHER_BACKEND_EXPORT, str(tmp_path)],
        env=dict(os.environ, KERAS_BACKEND=backend),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jax = [
        r"Export under the JAX backend traces the model \(jax2tf\) with "
        r"symbolic batch and sequence sizes, and layer PositionalEncoding "
        r"compares one with a number \('\w+' > '16'\), which JAX cannot "
        r"decide for every size\. Export under the TensorFlow backend: "
        r"KERAS_BACKEND=tensorflow \(a \.keras file saved under any backend "
        r"loads there\)\. Received: backend='jax'",
        r"Received an invalid value for argument `quantize`: integer TFLite "
        r"of a model traced under the JAX backend \(jax2tf\) converts, but "
        r"LiteRT's interpreter aborts the process running it: .* Received: "
        r"quantize='int8', backend='jax'",
    ]
    torch = [
        r"SavedModel and TFLite export trace the model into a TensorFlow "
        r"graph, which Keras cannot do from the torch backend .* Received: "
        r"backend='torch'"
    ] * 2
    lines = result.stdout.splitlines()
    expected = {"jax": jax, "torch": torch}[backend]
    assert len(lines) == len(expected), result.stdout
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), line
    assert os.listdir(tmp_path) == []
