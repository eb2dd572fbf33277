"""Save and reload: `.keras` in a new process, weights only, after training."""

import json
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest

from keras_encoder import EncoderBlock
from keras_encoder import PositionalEncoding
from keras_encoder import SentencePooling
from keras_encoder.testing import padded_ids

VOCAB, MAX_LENGTH = 30, 12


def build_classifier(
    mode="sinusoidal", norm_first=False, num_blocks=2, dropout=0.1
):
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCAB, 16, mask_zero=True)(tokens)
    x = PositionalEncoding(MAX_LENGTH, mode=mode)(x)
    for i in range(num_blocks):
        x = EncoderBlock(
            num_heads=2,
            intermediate_dim=32,
            dropout=dropout,
            norm_first=norm_first,
            activation="gelu",
            name=f"block_{i}",
        )(x)
    # A masked mean that is 0, not 0 / 0 (keras.layers.GlobalAveragePooling1D),
    # for the fully padded sequences in these tests.
    x = SentencePooling(normalize=False)(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(tokens, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def _tokens(seed=0, batch=8):
    return padded_ids(batch, MAX_LENGTH, VOCAB, seed=seed, min_length=0)


# What the scripts run in a new interpreter read and write, in order.
FILES = ("model.keras", "x.npy", "y.npy")


def _python(script, *args, timeout):
    """Run `script` in a new interpreter with `args`: the finished
    process, its output as text."""
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _train(model, steps=3):
    x = _tokens(1, batch=32)
    y = np.random.default_rng(2).integers(0, 3, size=32)
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=1,
        steps_per_epoch=steps,
        shuffle=False,
        verbose=0,
    )


RELOAD = textwrap.dedent("""
    import sys
    import keras
    import numpy as np
    import keras_encoder  # noqa: F401  (registers the layers)
    model = keras.saving.load_model(sys.argv[1])  # safe_mode=True
    np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
""")


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode,norm_first", [("sinusoidal", False), ("learned", True)]
)
def test_keras_file_reloads_in_fresh_process(mode, norm_first, tmp_path):
    model = build_classifier(mode, norm_first)
    _train(model)
    x = _tokens(3)
    np.save(tmp_path / "x.npy", x)
    model.save(tmp_path / "model.keras")
    # A new interpreter: nothing of this process's Keras state carries over.
    result = _python(RELOAD, *(tmp_path / f for f in FILES), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(
        np.load(tmp_path / "y.npy"), model.predict(x, verbose=0)
    )


def test_weights_only_round_trip(tmp_path):
    model = build_classifier("learned")
    _train(model)
    path = tmp_path / "model.weights.h5"
    model.save_weights(path)
    fresh = build_classifier("learned")
    x = _tokens(4)
    assert not np.allclose(
        fresh.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    # The file holds the optimizer's state too; build it to receive it.
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(path)
    for mine, theirs in zip(
        fresh.optimizer.variables, model.optimizer.variables, strict=True
    ):
        np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(
        fresh.predict(x, verbose=0), model.predict(x, verbose=0)
    )


def test_reloaded_model_keeps_training_identically(tmp_path):
    """Optimizer state and weights survive: the next steps match too.

    Without dropout: its random draws after a reload differ from those of
    the original model (measured: predictions then differ by about 1e-2).
    Without shuffling, for the same reason on JAX.
    """
    model = build_classifier(dropout=0.0)
    _train(model)
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    keras.utils.set_random_seed(7)
    _train(model, steps=2)
    keras.utils.set_random_seed(7)
    _train(reloaded, steps=2)
    x = _tokens(5)
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )


def test_weight_paths_are_stable():
    """Fixed sublayer names give the same weight paths in every model."""
    block = EncoderBlock(2, 8, name="block")
    block.build((None, None, 4))
    paths = sorted(w.path for w in block.weights)
    assert paths == sorted(
        [
            "block/self_attention/query/kernel",
            "block/self_attention/query/bias",
            "block/self_attention/key/kernel",
            "block/self_attention/key/bias",
            "block/self_attention/value/kernel",
            "block/self_attention/value/bias",
            "block/self_attention/attention_output/kernel",
            "block/self_attention/attention_output/bias",
            "block/self_attention_layer_norm/gamma",
            "block/self_attention_layer_norm/beta",
            "block/feedforward_intermediate_dense/kernel",
            "block/feedforward_intermediate_dense/bias",
            "block/feedforward_output_dense/kernel",
            "block/feedforward_output_dense/bias",
            "block/feedforward_layer_norm/gamma",
            "block/feedforward_layer_norm/beta",
        ]
    )


def _rewrite_keras_file(path, target, edit):
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    edit(config)
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


def _set_block_config(config, key, value):
    if isinstance(config, dict):
        if config.get("class_name") == "EncoderBlock":
            config["config"][key] = value
        for item in config.values():
            _set_block_config(item, key, value)
    elif isinstance(config, list):
        for item in config:
            _set_block_config(item, key, value)


def test_edited_and_truncated_keras_files_are_clear_errors(tmp_path):
    model = build_classifier()
    model.save(tmp_path / "good.keras")
    _rewrite_keras_file(
        tmp_path / "good.keras",
        tmp_path / "edited.keras",
        lambda config: _set_block_config(config, "num_heads", 0),
    )
    # Keras wraps our constructor's ValueError; its message names the
    # argument and the value.
    with pytest.raises(
        TypeError,
        match=r"Received an invalid value for argument `num_heads`: "
        r"expected a positive integer. Received: num_heads=0",
    ):
        keras.saving.load_model(tmp_path / "edited.keras")
    data = (tmp_path / "good.keras").read_bytes()
    (tmp_path / "truncated.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"accessible `.keras` zip file"):
        keras.saving.load_model(tmp_path / "truncated.keras")


CROSS_BACKEND = textwrap.dedent("""
    import os
    import sys
    os.environ["KERAS_BACKEND"] = sys.argv[1]
    import keras
    import numpy as np
    import keras_encoder
    # compile=False: a JAX-saved model's jit_compile=True would make torch
    # compile it (about a minute) for this one predict.
    model = keras.saving.load_model(sys.argv[2], compile=False)
    x = np.load(sys.argv[3])
    y = model.predict(x, verbose=0)
    np.save(sys.argv[4], keras.ops.convert_to_numpy(y))
    if sys.argv[1] == "tensorflow":
        from keras_encoder import export
        tflite = export.to_tflite(model, sys.argv[5])
        diff = export.verify(model, tflite, x).max_abs_diff
        print("tflite max abs diff", diff)
""")


BACKENDS = ("tensorflow", "jax", "torch")


@pytest.mark.slow
@pytest.mark.parametrize("other", BACKENDS)
def test_keras_file_moves_between_backends(other, tmp_path):
    """Saved under this backend, loaded under each other one (and, under
    TensorFlow, exported to TFLite): the same outputs."""
    if other == keras.backend.backend():
        pytest.skip("same backend: see test_keras_file_reloads_*")
    pytest.importorskip(other)
    model = build_classifier("learned", norm_first=True)
    _train(model)
    x = _tokens(6)
    np.save(tmp_path / "x.npy", x)
    model.save(tmp_path / "model.keras")
    result = _python(
        CROSS_BACKEND,
        other,
        *(tmp_path / f for f in (*FILES, "model.tflite")),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = model.predict(x, verbose=0)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-5)
    if other == "tensorflow":
        diff = float(result.stdout.split("tflite max abs diff")[-1])
        assert diff <= 1e-5
