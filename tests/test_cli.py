"""The keras-encoder command: success paths and every bad-input case."""

import os
import pathlib
import re
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

from keras_encoder import EncoderBlock
from keras_encoder import PositionalEncoding
from keras_encoder import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(50, 64, mask_zero=True)(ids)
    x = PositionalEncoding(12)(x)
    x = EncoderBlock(4, 128)(x)
    model = keras.Model(ids, keras.layers.GlobalAveragePooling1D()(x))
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    # Every length from 1 to 12: int8 calibrates the masked mean's token
    # count like any activation, so short sequences must be represented.
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, size=(64, 12)).astype("int32")
    lengths = rng.integers(1, 13, size=64)
    ids[np.arange(12)[None, :] >= lengths[:, None]] = 0
    path = tmp_path_factory.mktemp("calibration") / "calibration.npy"
    np.save(path, ids)
    return path


def test_export_prints_parity_table(model_file, calibration, tmp_path, capsys):
    saved, tflite = tmp_path / "saved_model", tmp_path / "model.tflite"
    code = cli.main(
        [
            "export",
            str(model_file),
            "--saved-model",
            str(saved),
            "--tflite",
            str(tflite),
            "--quantize",
            "int8",
            "--calibration",
            str(calibration),
            "--seq-len",
            "1",
            "12",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert (saved / "saved_model.pb").exists() and tflite.stat().st_size > 0
    rows = [line.split() for line in out.splitlines()[2:]]
    # saved model x (seq 1, seq 12, calibration), then the same for TFLite.
    assert [r[0] for r in rows] == [str(saved)] * 3 + [str(tflite)] * 3
    for row in rows:
        assert float(row[-2]) >= 0.99  # cosine
    assert [r[-1] for r in rows] == ["-"] * 3 + ["yes"] * 3


def test_inspect(model_file, tmp_path, capsys):
    tflite = tmp_path / "model.tflite"
    assert cli.main(["export", str(model_file), "--tflite", str(tflite)]) == 0
    capsys.readouterr()
    assert cli.main(["inspect", str(tflite)]) == 0
    out = capsys.readouterr().out
    assert "builtin ops only: yes" in out
    assert "tokens" in out and "[-1, -1]" in out
    assert "output_0" in out and "[-1, 64]" in out
    assert "FULLY_CONNECTED" in out and "SOFTMAX" in out


def test_console_script_is_installed(tmp_path):
    """The entry point in the package metadata, run as a user would."""
    script = os.path.join(os.path.dirname(sys.executable), "keras-encoder")
    result = subprocess.run(
        [script, "inspect", str(tmp_path / "missing.tflite")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"keras-encoder: error: {tmp_path / 'missing.tflite'}: no such file"
    )


def _not_a_keras_file(tmp_path):
    path = tmp_path / "notes.keras"
    path.write_text("hello")
    return path


def _zip_without_config(tmp_path):
    path = tmp_path / "other.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    return path


BAD_EXPORTS = {
    "missing model": (
        lambda tmp, model, cal: [
            str(tmp / "nope.keras"),
            "--tflite",
            "m.tflite",
        ],
        r"nope.keras: no such file",
    ),
    "not a zip": (
        lambda tmp, model, cal: [
            str(_not_a_keras_file(tmp)),
            "--tflite",
            str(tmp / "m.tflite"),
        ],
        r"not a Keras .keras file \(not a zip\)",
    ),
    "zip without config": (
        lambda tmp, model, cal: [
            str(_zip_without_config(tmp)),
            "--tflite",
            str(tmp / "m.tflite"),
        ],
        r"not a Keras .keras file \(no config\)",
    ),
    "int8 without calibration": (
        lambda tmp, model, cal: [
            str(model),
            "--tflite",
            str(tmp / "m.tflite"),
            "--quantize",
            "int8",
        ],
        r"--quantize int8 needs --calibration",
    ),
    "missing calibration file": (
        lambda tmp, model, cal: [
            str(model),
            "--tflite",
            str(tmp / "m.tflite"),
            "--quantize",
            "int8",
            "--calibration",
            str(tmp / "none.npy"),
        ],
        r"--calibration .*none.npy: no such file",
    ),
    "unwritable path": (
        lambda tmp, model, cal: [
            str(model),
            "--tflite",
            str(tmp / "no" / "such" / "dir" / "m.tflite"),
        ],
        r"--tflite .*m.tflite: directory .* does not exist",
    ),
    "unwritable saved model path": (
        lambda tmp, model, cal: [
            str(model),
            "--saved-model",
            str(tmp / "no" / "dir" / "sm"),
        ],
        r"--saved-model .*sm: directory .* does not exist",
    ),
    "nothing to do": (
        lambda tmp, model, cal: [str(model)],
        r"nothing to do",
    ),
    "sequence longer than the model": (
        lambda tmp, model, cal: [
            str(model),
            "--tflite",
            str(tmp / "m.tflite"),
            "--seq-len",
            "40",
        ],
        r"--seq-len 40 exceeds the model's max_length 12",
    ),
}


@pytest.mark.parametrize("case", BAD_EXPORTS)
def test_bad_export_input(case, model_file, calibration, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    make_args, message = BAD_EXPORTS[case]
    code = cli.main(["export", *make_args(work, model_file, calibration)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("keras-encoder: error: ")
    assert re.search(message, err), err
    # Nothing partially written: only the inputs the case itself made.
    leftovers = {p.name for p in work.iterdir()}
    assert leftovers <= {"notes.keras", "other.keras"}, leftovers


def test_bad_inspect_input(tmp_path, capsys):
    bogus = tmp_path / "bogus.tflite"
    bogus.write_bytes(b"not a flatbuffer at all")
    assert cli.main(["inspect", str(bogus)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"keras-encoder: error: {bogus}: not a TFLite model")
    assert len(err.strip().splitlines()) == 1


def test_sample_inputs_follow_each_input(tmp_path):
    """Ids span the Embedding each input feeds; names keep their dtypes."""
    from keras_encoder import convert

    fixtures = pathlib.Path(__file__).parent / "fixtures" / "tiny_bert"
    bert = convert.load_hf_bert(fixtures)
    sample = cli._sample_inputs(bert, 12)
    assert sample["input_ids"].max() > 2  # the word table, not token types
    assert sample["token_type_ids"].max() <= 1
    assert set(np.unique(sample["attention_mask"])) == {0, 1}

    # A dict model whose keys are not in sorted order, with mixed dtypes.
    features = keras.Input((None, 4), name="zfeat")
    ids = keras.Input((None,), dtype="int32", name="aids")
    x = keras.layers.Embedding(9, 4)(ids) + features
    model = keras.Model({"zfeat": features, "aids": ids}, EncoderBlock(2, 8)(x))
    sample = cli._sample_inputs(model, 5)
    assert sample["zfeat"].dtype == np.float32
    assert sample["zfeat"].shape == (2, 5, 4)
    assert sample["aids"].dtype == np.int32 and sample["aids"].max() < 9


def test_calibration_arrays_must_agree(tmp_path, capsys):
    path = tmp_path / "calibration.npz"
    np.savez(path, tokens=np.ones((4, 6), "int32"), other=np.ones((3, 6)))
    assert cli._load_calibration(str(path), ["tokens"])[0]["tokens"].shape == (
        4,
        6,
    )
    with pytest.raises(cli.UsageError, match=r"different numbers of examples"):
        cli._load_calibration(str(path), ["tokens", "other"])
