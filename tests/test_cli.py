"""The keras-encoder command: success paths and every bad-input case."""

import concurrent.futures
import hashlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest

from keras_encoder import EncoderBlock
from keras_encoder import PositionalEncoding
from keras_encoder import cli
from keras_encoder import export
from keras_encoder.testing import padded_ids

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32", name="tokens")
    # Named: error messages below quote it, whatever ran before.
    x = keras.layers.Embedding(50, 64, mask_zero=True, name="embedding")(ids)
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
    ids = padded_ids(64, 12, 50, seed=0)
    path = tmp_path_factory.mktemp("calibration") / "calibration.npy"
    np.save(path, ids)
    return path


@pytest.mark.parametrize("mode", ["int8", "int16x8"])
def test_export_prints_parity_table(
    mode, model_file, calibration, tmp_path, capsys
):
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
            mode,
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


def test_export_writes_onnx_beside_the_others(model_file, tmp_path, capsys):
    onnx_path, tflite = tmp_path / "model.onnx", tmp_path / "model.tflite"
    code = cli.main(
        ["export", str(model_file), "--tflite", str(tflite)]
        + ["--onnx", str(onnx_path), "--seq-len", "1", "12"]
    )
    out = capsys.readouterr().out
    assert code == 0
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [r[0] for r in rows] == [str(tflite)] * 2 + [str(onnx_path)] * 2
    for row in rows:
        assert float(row[-3]) <= 1e-4  # max |diff|
    assert [r[-1] for r in rows] == ["yes"] * 2 + ["-"] * 2


def test_onnx_under_another_backend_is_one_line(model_file, tmp_path):
    """Refused before any work, with the way out, not after the TFLite
    conversion has run."""
    result = subprocess.run(
        [COMMAND, "export", str(model_file), "--tflite", "m.tflite"]
        + ["--onnx", "m.onnx"],
        cwd=tmp_path,
        env=dict(os.environ, KERAS_BACKEND="jax"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "keras-encoder: error: --onnx converts a TensorFlow graph: run with "
        "KERAS_BACKEND=tensorflow (a .keras file from any backend loads "
        "there). Received: backend='jax'"
    ]
    assert list(tmp_path.iterdir()) == []


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
    # Exactly one line: what TensorFlow prints while it is imported is
    # held back when the command fails with its own line.
    assert result.stderr.splitlines() == [
        f"keras-encoder: error: {tmp_path / 'missing.tflite'}: no such file"
    ]


# A script (by default the installed command's own) run as its shebang
# runs it (as __main__, sys.argv[0] its path), with a hook on the first
# import of `module`: it writes a marker to file descriptor 2 (standing for
# TensorFlow's C++ log while the package is imported), then does `action`.
HOOKED_COMMAND = """
import os, runpy, signal, sys
script, module, action, *args = sys.argv[1:]
ACTIONS = {
    "none": lambda: None,
    "abort": os.abort,  # a native abort, as TensorFlow's LOG(FATAL) does
    "exit": lambda: os._exit(3),
    "kill": lambda: os.kill(os.getpid(), signal.SIGKILL),
    "interrupt": lambda: os.kill(os.getpid(), signal.SIGINT),  # Ctrl-C
}


class Hook:
    def find_spec(self, name, path=None, target=None):
        if name == module:
            sys.meta_path.remove(self)
            os.write(2, b"held-marker\\n")
            ACTIONS[action]()
        return None


# Ctrl-C as in a terminal's foreground job: a background job of a
# non-interactive shell (as CI runs the suite) starts with SIGINT ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.stderr.flush()
os.write(2, b"imported-marker\\n")  # before the package: not held
sys.meta_path.insert(0, Hook())
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
"""


def _hooked_command_run(tmp_path, module, action, *args, script=None):
    script = script or COMMAND
    return subprocess.run(
        [sys.executable, "-c", HOOKED_COMMAND, script, module, action, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args, own_lines",
    [
        (
            ["inspect", "missing.tflite"],
            ["keras-encoder: error: missing.tflite: no such file"],
        ),
        (
            ["inspect"],
            [
                "usage: keras-encoder inspect [-h] FILE.tflite",
                "keras-encoder inspect: error: the following arguments are "
                "required: FILE.tflite",
            ],
        ),
    ],
)
def test_import_log_dropped_on_failure(tmp_path, args, own_lines):
    """A failing command prints only its own line(s) (or argparse's)."""
    result = _hooked_command_run(tmp_path, "keras_encoder.cli", "none", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == ["imported-marker", *own_lines]


def test_import_log_passed_on_on_success(tmp_path):
    """Whatever was written while the package was imported (TensorFlow's
    own lines on this machine, then the marker, written as the command's
    module is imported) comes out after."""
    result = _hooked_command_run(tmp_path, "keras_encoder.cli", "none", "-h")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "imported-marker"
    assert lines[-1] == "held-marker"
    assert result.stdout.startswith("usage: keras-encoder")


@pytest.mark.parametrize(
    "action, returncode",
    [("abort", -signal.SIGABRT), ("kill", -signal.SIGKILL), ("exit", 3)],
)
def test_held_text_survives_a_sudden_death(tmp_path, action, returncode):
    """A native abort (or a kill, or os._exit) while TensorFlow is being
    imported: what was printed before it still reaches stderr."""
    result = _hooked_command_run(tmp_path, "keras", action, "--help")
    assert result.returncode == returncode, result.stderr
    assert result.stderr.splitlines()[:2] == ["imported-marker", "held-marker"]


def test_interrupt_while_importing(tmp_path):
    """Ctrl-C while TensorFlow is being imported: the command's own line
    and status 130, not a traceback from inside the import."""
    result = _hooked_command_run(tmp_path, "keras", "interrupt", "--help")
    assert result.returncode == 130, result.stderr
    assert result.stderr.splitlines() == [
        "imported-marker",
        "keras-encoder: interrupted",
    ]


@pytest.mark.parametrize(
    "args, returncode, stdout",
    [
        (["--help"], 0, "usage: keras-encoder"),
        (["export", "missing.keras", "--tflite", "m.tflite"], 2, ""),
    ],
)
def test_closed_stderr(tmp_path, args, returncode, stdout):
    """`keras-encoder ... 2>&-`: the command runs as usual; what it would
    print to stderr is dropped."""
    result = subprocess.run(
        ["sh", "-c", 'exec "$0" "$@" 2>&-', COMMAND, *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    assert result.returncode == returncode
    assert result.stdout.startswith(stdout)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["keras-encoder.py", "keras-encoder"])
def test_script_named_like_the_command_is_not_it(tmp_path, name):
    """A user's own script of that name imports the package as a library:
    nothing is held, so what is printed meanwhile survives os._exit."""
    script = tmp_path / name
    script.write_text("import keras_encoder\n")
    result = _hooked_command_run(tmp_path, "keras", "exit", script=script)
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines() == ["imported-marker", "held-marker"]


def test_import_failure_still_shows_its_traceback(tmp_path):
    """If the import itself fails, main never runs: the held text and the
    traceback reach the real stderr at exit."""
    result = subprocess.run(
        [COMMAND, "--help"],
        cwd=tmp_path,
        env=dict(os.environ, KERAS_BACKEND="no_such_backend"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "no_such_backend" in result.stderr


def test_library_import_holds_nothing(tmp_path):
    """Outside the command (here `python -c`), stderr is left alone."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, keras_encoder; os.write(2, b'after-import\\n')",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1] == "after-import"


def _not_a_keras_file(tmp_path):
    path = tmp_path / "notes.keras"
    path.write_text("hello")
    return path


def _zip_without_config(tmp_path):
    path = tmp_path / "other.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    return path


def _to_tflite(model, tmp, *options, target="m.tflite"):
    """Arguments exporting `model` to `tmp / target`, then `options`."""
    return [str(model), "--tflite", str(tmp / target), *options]


# case: (arguments from (work dir, model file, calibration file), error)
BAD_EXPORTS = {
    "missing model": (
        lambda tmp, model, cal: _to_tflite(tmp / "nope.keras", tmp),
        r"nope.keras: no such file",
    ),
    "not a zip": (
        lambda tmp, model, cal: _to_tflite(_not_a_keras_file(tmp), tmp),
        r"not a Keras .keras file \(not a zip\)",
    ),
    "zip without config": (
        lambda tmp, model, cal: _to_tflite(_zip_without_config(tmp), tmp),
        r"not a Keras .keras file \(no config\)",
    ),
    "int8 without calibration": (
        lambda tmp, model, cal: _to_tflite(model, tmp, "--quantize", "int8"),
        r"--quantize int8 needs --calibration",
    ),
    "int16x8 without calibration": (
        lambda tmp, model, cal: _to_tflite(model, tmp, "--quantize", "int16x8"),
        r"--quantize int16x8 needs --calibration",
    ),
    "missing calibration file": (
        lambda tmp, model, cal: _to_tflite(
            model,
            tmp,
            *("--quantize", "int8", "--calibration", str(tmp / "none.npy")),
        ),
        r"--calibration .*none.npy: no such file",
    ),
    "unwritable path": (
        lambda tmp, model, cal: _to_tflite(
            model, tmp, target="no/such/dir/m.tflite"
        ),
        r"--tflite .*m.tflite: directory .* does not exist",
    ),
    "unwritable saved model path": (
        lambda tmp, model, cal: [str(model), "--saved-model", f"{tmp}/no/sm"],
        r"--saved-model .*sm: directory .* does not exist",
    ),
    "nothing to do": (
        lambda tmp, model, cal: [str(model)],
        r"nothing to do",
    ),
    "sequence longer than the model": (
        lambda tmp, model, cal: _to_tflite(model, tmp, "--seq-len", "40"),
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


def test_int16x8_without_the_quantizer_is_one_line(
    model_file, calibration, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "ai_edge_quantizer", None)
    tflite = tmp_path / "m.tflite"
    code = cli.main(
        ["export", str(model_file), "--tflite", str(tflite)]
        + ["--quantize", "int16x8", "--calibration", str(calibration)]
    )
    err = capsys.readouterr().err
    assert code == 2 and not tflite.exists()
    assert err.splitlines() == [
        'keras-encoder: error: quantize="int16x8" needs Google\'s '
        "ai-edge-quantizer: pip install ai-edge-quantizer (or "
        "keras-encoder[quantizer])"
    ]


def _onnx_model_bytes():
    onnx = pytest.importorskip("onnx")
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [value],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    return onnx.helper.make_model(graph).SerializeToString()


# case: (file content, the error after "keras-encoder: error: FILE: ")
NOT_TFLITE = {
    "an ONNX model": (
        _onnx_model_bytes,
        r"not a TFLite flatbuffer \(no TFL3 file identifier at byte 4; the "
        r"file starts with b'\\x08.*'\)",
    ),
    "text": (
        lambda: b"not a flatbuffer at all",
        r"not a TFLite flatbuffer \(no TFL3 file identifier at byte 4; the "
        r"file starts with b'not a fl'\)",
    ),
    "an empty file": (
        lambda: b"",
        r"not a TFLite flatbuffer \(the file is empty\)",
    ),
    "a short file": (
        lambda: b"TFL3",
        r"not a TFLite flatbuffer \(4 bytes, too short for one\)",
    ),
    "a .keras file": (
        None,  # the model_file fixture
        r"not a TFLite flatbuffer \(a zip archive, e.g. a .keras model\)",
    ),
    "a damaged TFLite model": (
        lambda: b"\x1c\x00\x00\x00TFL3" + bytes(8),
        r"a damaged TFLite flatbuffer \(.+\)",
    ),
}


@pytest.mark.parametrize("case", NOT_TFLITE)
def test_inspect_refuses_what_is_not_tflite(case, model_file, tmp_path, capsys):
    """Exit 2 and one line that says what the file is not, not the
    flatbuffer parser's "unpack_from requires a buffer ..."."""
    content, message = NOT_TFLITE[case]
    path = tmp_path / "model.onnx"
    if content is None:
        shutil.copy(model_file, path)
    else:
        path.write_bytes(content())
    assert cli.main(["inspect", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    prefix = re.escape(f"keras-encoder: error: {path}: ")
    assert re.fullmatch(prefix + message, lines[0]), lines[0]


def test_sample_inputs_follow_each_input(tmp_path):
    """Ids span the Embedding each input feeds; names keep their dtypes."""
    from keras_encoder import convert

    fixtures = pathlib.Path(__file__).parent / "fixtures" / "tiny_bert"
    bert = convert.load_hf_bert(fixtures)
    sample = export.sample_inputs(bert, 12)
    assert sample["input_ids"].max() > 2  # the word table, not token types
    assert sample["token_type_ids"].max() <= 1
    assert set(np.unique(sample["attention_mask"])) == {0, 1}

    # A dict model whose keys are not in sorted order, with mixed dtypes.
    features = keras.Input((None, 4), name="zfeat")
    ids = keras.Input((None,), dtype="int32", name="aids")
    x = keras.layers.Embedding(9, 4)(ids) + features
    model = keras.Model({"zfeat": features, "aids": ids}, EncoderBlock(2, 8)(x))
    sample = export.sample_inputs(model, 5)
    assert sample["zfeat"].dtype == np.float32
    assert sample["zfeat"].shape == (2, 5, 4)
    assert sample["aids"].dtype == np.int32 and sample["aids"].max() < 9


def test_calibration_arrays_must_agree(model_file, tmp_path):
    model = keras.saving.load_model(model_file)
    path = tmp_path / "calibration.npz"
    np.savez(path, tokens=np.ones((4, 6), "int32"), other=np.ones((3, 6)))
    batches = cli._load_calibration(str(path), model)
    assert [b["tokens"].shape for b in batches] == [(4, 6)]
    multi = keras.Model(
        {"tokens": model.input, "other": keras.Input((None,), name="other")},
        model.output,
    )
    with pytest.raises(cli.UsageError, match=r"different numbers of examples"):
        cli._load_calibration(str(path), multi)


# The installed command, run as a user would, in a directory of the user's
# own: a project with notes, a file, a previous SavedModel and TFLite model.
COMMAND = os.path.join(os.path.dirname(sys.executable), "keras-encoder")


def _snapshot(root):
    """{relative path: content digest, or "dir"} of everything under root."""
    tree = {}
    for path in sorted(pathlib.Path(root).rglob("*")):
        key = str(path.relative_to(root))
        if path.is_dir():
            tree[key] = "dir"
        else:
            tree[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return tree


@pytest.fixture(scope="module")
def half_model_file(tmp_path_factory):
    """A model saved under mixed_float16: it keeps that policy when loaded."""
    keras.config.set_dtype_policy("mixed_float16")
    try:
        ids = keras.Input((None,), dtype="int32", name="tokens")
        x = keras.layers.Embedding(50, 16)(ids)
        model = keras.Model(ids, EncoderBlock(2, 32)(x))
    finally:
        keras.config.set_dtype_policy("float32")
    path = tmp_path_factory.mktemp("half") / "half.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def user_dir_template(model_file, half_model_file, tmp_path_factory):
    """A user's working directory, with a previous export in it."""
    root = tmp_path_factory.mktemp("template")
    shutil.copy(model_file, root / "model.keras")
    shutil.copy(half_model_file, root / "half.keras")
    (root / "project" / "src").mkdir(parents=True)
    (root / "project" / "src" / "notes.txt").write_text("my notes")
    (root / "notes.txt").write_text("more notes")
    (root / "empty_dir").mkdir()
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, size=(16, 12)).astype("int32")
    np.save(root / "calibration.npy", ids)
    np.save(root / "float_ids.npy", ids.astype("float32"))
    np.save(root / "outside_vocabulary.npy", ids + 10)
    np.save(root / "too_long.npy", np.ones((4, 20), "int32"))
    np.save(root / "one_row.npy", ids[0])
    code = subprocess.run(
        [COMMAND, "export", "model.keras", "--saved-model", "old_saved_model"]
        + ["--tflite", "old.tflite", "--seq-len", "2"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    ).returncode
    assert code == 0
    return root


def _user_dir(template, tmp_path):
    work = tmp_path / "user"
    shutil.copytree(template, work)
    (tmp_path / "tmp").mkdir()
    return work


def _run(work, args, timeout=300):
    """The installed command in `work`, with its own TMPDIR beside it."""
    env = dict(os.environ, TMPDIR=str(work.parent / "tmp"))
    return subprocess.run(
        [COMMAND, *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _export(*args):
    return ["export", "model.keras", *args]


# case: (arguments, with {work} for the user's directory; the error line)
USER_CASES = {
    "saved model onto the user's project": (
        _export("--saved-model", "project", "--seq-len", "2"),
        "--saved-model project: exists and is not a SavedModel (it holds "
        "src); refusing to replace it: remove it or choose another path",
    ),
    "saved model onto a file": (
        _export("--saved-model", "notes.txt", "--tflite", "new.tflite"),
        "--saved-model notes.txt: is a file, where a SavedModel goes; "
        "refusing to replace it",
    ),
    "saved model onto the current directory": (
        _export("--saved-model", "."),
        "--saved-model . would overwrite the input model.keras",
    ),
    "the same path twice": (
        _export("--saved-model", "out", "--tflite", "out"),
        "--saved-model out and --tflite out are the same path",
    ),
    "the same path, trailing slash and absolute": (
        _export("--saved-model", "out/", "--tflite", "{work}/out"),
        "--saved-model out/ and --tflite {work}/out are the same path",
    ),
    "onnx the same path as tflite": (
        _export("--tflite", "m.out", "--onnx", "./m.out"),
        "--tflite m.out and --onnx ./m.out are the same path",
    ),
    "onnx inside the saved model": (
        _export("--saved-model", "out", "--onnx", "out/m.onnx"),
        "--onnx out/m.onnx is inside --saved-model out, which is replaced "
        "as a whole",
    ),
    "onnx onto the user's notes": (
        _export("--onnx", "project/src/notes.txt"),
        "--onnx project/src/notes.txt: exists and is not an ONNX model; "
        "refusing to replace it: remove it or choose another path",
    ),
    "tflite inside the saved model": (
        _export("--saved-model", "out", "--tflite", "./out/m.tflite"),
        "--tflite ./out/m.tflite is inside --saved-model out, which is "
        "replaced as a whole",
    ),
    "tflite onto a directory": (
        _export("--tflite", "empty_dir"),
        "--tflite empty_dir: is a directory, where a TFLite model goes; "
        "refusing to replace it",
    ),
    "tflite onto a directory path": (
        _export("--tflite", "new/"),
        "--tflite new/: a TFLite model is a file, not a directory path",
    ),
    "tflite onto a file of the user's": (
        _export("--tflite", "notes.txt"),
        "--tflite notes.txt: exists and is not a TFLite model; refusing to "
        "replace it: remove it or choose another path",
    ),
    "tflite onto the model": (
        _export("--tflite", "model.keras"),
        "--tflite model.keras would overwrite the input model.keras",
    ),
    "float calibration ids": (
        _export("--tflite", "old.tflite", "--saved-model", "old_saved_model")
        + ["--quantize", "int8", "--calibration", "float_ids.npy"],
        "--calibration float_ids.npy: expected integer values for input "
        "'tokens' (int32); floats are not cast to ids silently. Received: "
        "dtype=float32",
    ),
    "calibration ids outside the vocabulary": (
        _export("--tflite", "old.tflite", "--quantize", "int8")
        + ["--calibration", "outside_vocabulary.npy"],
        "--calibration outside_vocabulary.npy: expected token ids in "
        "[0, 50) for input 'tokens', which feeds Embedding 'embedding' "
        "(input_dim=50). Received: ids from 11 to 59",
    ),
    "calibration longer than max_length": (
        _export("--tflite", "old.tflite", "--quantize", "int8")
        + ["--calibration", "too_long.npy"],
        "--calibration too_long.npy: expected sequences of at most "
        "max_length=12 (the model's PositionalEncoding) for input 'tokens'. "
        "Received: length 20",
    ),
    "calibration of one row": (
        _export("--tflite", "old.tflite", "--quantize", "int8")
        + ["--calibration", "one_row.npy"],
        "--calibration one_row.npy: expected input 'tokens' of rank 2, "
        "(batch, sequence). Received: shape=(12,)",
    ),
    "float16 model (Flex ops)": (
        ["export", "half.keras", "--saved-model", "old_saved_model"]
        + ["--tflite", "old.tflite", "--seq-len", "2"],
        "The model needs TensorFlow ops that builtin TFLite lacks: .* The "
        "model computes in float16: export in float32: build/load the model "
        "under the float32 policy",
    ),
}


@pytest.fixture(scope="module")
def user_case_results(request, user_dir_template, tmp_path_factory):
    """Run the selected USER_CASES, two at a time (one per CI core):
    {case: (work dir, snapshot before, result)}."""
    selected = {
        item.callspec.params["user_case"]
        for item in request.session.items
        if hasattr(item, "callspec") and "user_case" in item.callspec.params
    }

    def run(case):
        tmp_path = tmp_path_factory.mktemp("case")
        work = _user_dir(user_dir_template, tmp_path)
        args = [a.replace("{work}", str(work)) for a in USER_CASES[case][0]]
        before = _snapshot(work)
        return case, (work, before, _run(work, args))

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, sorted(selected)))


@pytest.mark.parametrize("user_case", USER_CASES)
def test_refused_as_one_line_with_nothing_written(user_case, user_case_results):
    """Exit 2, one line on stderr, the user's files (project/src/notes.txt,
    the previous export) untouched, no temporary file left anywhere."""
    work, before, result = user_case_results[user_case]
    message = USER_CASES[user_case][1].replace("{work}", str(work))
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    if user_case == "float16 model (Flex ops)":
        assert re.fullmatch(f"keras-encoder: error: {message}.*", lines[0])
    else:
        assert lines[0] == f"keras-encoder: error: {message}"
    assert _snapshot(work) == before
    assert os.listdir(work.parent / "tmp") == []


def test_replaces_previous_artifacts_and_nothing_else(
    user_dir_template, tmp_path
):
    """A previous SavedModel (named with a trailing slash) and .tflite are
    replaced in place; no temporary directory is left inside or beside."""
    work = _user_dir(user_dir_template, tmp_path)
    before = _snapshot(work)
    replaced = ("old.tflite", "old_saved_model/saved_model.pb")
    mtimes = {name: (work / name).stat().st_mtime_ns for name in replaced}
    result = _run(
        work,
        _export("--saved-model", "old_saved_model/")
        + ["--tflite", f"{work}/old.tflite", "--seq-len", "3"],
    )
    assert result.returncode == 0, result.stderr
    for name in replaced:
        assert (work / name).stat().st_mtime_ns > mtimes[name], name
    after = _snapshot(work)
    assert set(after) == set(before)  # nothing new inside or beside
    assert {k for k in before if after[k] != before[k]} <= {
        k for k in before if k == "old.tflite" or k.startswith("old_saved")
    }
    assert os.listdir(work.parent / "tmp") == []


def test_interrupt_that_tensorflow_turns_into_another_error(
    model_file, tmp_path, monkeypatch
):
    """TensorFlow can turn a Ctrl-C into another exception while it traces
    (seen: AttributeError from its nest.flatten): still exit 130, nothing
    written."""

    def interrupted_stage(*args):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            raise AttributeError(
                "'SymbolicTensor' object has no attribute '_type_spec'"
            ) from None
        raise AssertionError("SIGINT did not interrupt")

    monkeypatch.setattr(cli, "_stage", interrupted_stage)
    tflite = tmp_path / "m.tflite"
    handler = signal.getsignal(signal.SIGINT)
    try:
        code = cli.main(["export", str(model_file), "--tflite", str(tflite)])
    finally:
        signal.signal(signal.SIGINT, handler)  # main ignores a second one
    assert code == 130 and not tflite.exists()


def test_interrupt_leaves_nothing(user_dir_template, tmp_path):
    """Ctrl-C in the middle of an export: exit 130, the destinations as
    they were, no temporary file beside them or in TMPDIR."""
    work = _user_dir(user_dir_template, tmp_path)
    before = _snapshot(work)
    tmp = work.parent / "tmp"
    process = subprocess.Popen(
        [COMMAND, *_export("--saved-model", "old_saved_model")]
        + ["--tflite", "new.tflite", "--seq-len", "2"],
        cwd=work,
        env=dict(os.environ, TMPDIR=str(tmp)),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not os.listdir(tmp) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # Ctrl-C while converting, again if it goes unheard: Python drops a
    # KeyboardInterrupt raised inside a garbage-collection callback.
    while process.poll() is None:
        assert time.monotonic() < deadline
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
    stderr = process.stderr.read()
    process.stderr.close()
    assert process.returncode == 130, stderr
    assert stderr.splitlines() == ["keras-encoder: interrupted"]
    assert _snapshot(work) == before
    assert os.listdir(tmp) == []


def test_stdout_a_closed_pipe(user_dir_template):
    """`keras-encoder inspect m.tflite | head -0`: no BrokenPipeError
    traceback; status 141, as for a tool that SIGPIPE ends."""
    read, write = os.pipe()
    os.close(read)  # the reader has gone
    try:
        result = subprocess.run(
            [COMMAND, "inspect", "old.tflite"],
            cwd=user_dir_template,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert result.returncode == 141, result.stderr
    assert result.stderr == ""
