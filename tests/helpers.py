"""Shared test helpers: the generic layer checks, done once."""

import json
import os
import shutil

import keras
import numpy as np

import keras_encoder


def attention_weights(layer):
    """[Wq, bq, Wk, bk, Wv, bv, Wo, bo] of a MultiHeadSelfAttention."""
    dense = (
        layer.query_dense,
        layer.key_dense,
        layer.value_dense,
        layer.output_dense,
    )
    return [w for d in dense for w in (d.kernel.numpy(), d.bias.numpy())]


def block_weights(block):
    """Block weights in the order `numpy_reference.encoder_block` takes."""
    rest = (
        block.attention_layer_norm.gamma,
        block.attention_layer_norm.beta,
        block.intermediate_dense.kernel,
        block.intermediate_dense.bias,
        block.output_dense.kernel,
        block.output_dense.bias,
        block.feedforward_layer_norm.gamma,
        block.feedforward_layer_norm.beta,
    )
    return attention_weights(block.attention) + [w.numpy() for w in rest]


def randomize_weights(layer, seed=0, scale=0.5):
    """Non-trivial biases and LayerNorm parameters, so tests see them."""
    rng = np.random.default_rng(seed)
    layer.set_weights(
        [
            rng.normal(0.0, scale, w.shape).astype("float32")
            + (1.0 if w.path.endswith(("gamma", "scale")) else 0.0)
            for w in layer.weights
        ]
    )


def to_numpy(x):
    """A backend tensor (or anything array-like) as a NumPy array."""
    return keras.ops.convert_to_numpy(x)


def value_and_gradients(layer, x, loss_mask=None, **kwargs):
    """Output and d(loss)/d(inputs and trainable weights), where the loss is
    the sum of squared outputs at the positions where `loss_mask` is True
    (all by default). TensorFlow, JAX and torch backends."""
    if not layer.built:
        layer.build(x.shape)

    def loss_of(out):
        squares = keras.ops.square(keras.ops.cast(out, "float32"))
        if loss_mask is not None:
            keep = keras.ops.expand_dims(loss_mask, -1)
            squares = keras.ops.where(keep, squares, 0.0)
        return keras.ops.sum(squares)

    if keras.backend.backend() == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        frozen = [v.value for v in layer.non_trainable_variables]

        def forward(inputs, weights):
            out, _ = layer.stateless_call(weights, frozen, inputs, **kwargs)
            return loss_of(out), out

        (_, out), (dx, dw) = jax.value_and_grad(
            forward, argnums=(0, 1), has_aux=True
        )(x, trainable)
        return out, [dx, *dw]

    if keras.backend.backend() == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        if loss_mask is not None:
            loss_mask = torch.as_tensor(loss_mask)
        out = layer(x, **kwargs)
        weights = [w.value for w in layer.trainable_weights]
        grads = torch.autograd.grad(
            loss_of(out), [x, *weights], allow_unused=True
        )
        grads = [
            torch.zeros_like(w) if g is None else g
            for g, w in zip(grads, [x, *weights], strict=True)
        ]
        return out.detach(), grads

    import tensorflow as tf

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x, **kwargs)
        loss = loss_of(out)
    weights = [w.value for w in layer.trainable_weights]  # tf.Variables
    grads = tape.gradient(
        loss, [x, *weights], unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    return out, grads


def all_finite(*tensors):
    """Whether every tensor (any backend, any float dtype) is finite."""
    return all(
        np.isfinite(
            keras.ops.convert_to_numpy(keras.ops.cast(t, "float32"))
        ).all()
        for t in tensors
    )


def padding_mask(lengths, length):
    return np.arange(length)[None, :] < np.asarray(lengths)[:, None]


def _outputs(layer, x):
    out = layer(x)
    return out[0] if isinstance(out, tuple) else out


def run_layer_test(cls, init_kwargs, width=16, tmp_path=None):
    """The checks every layer must pass, for one configuration.

    - config round trip (from_config and keras serialization);
    - symbolic output spec equals eager output shape, for a static and a
      dynamic sequence length, and for two different lengths eagerly;
    - one training step moves every trainable weight, with a finite loss;
    - mixed_float16 and mixed_bfloat16: outputs in the compute dtype,
      float32 variables, finite values;
    - `.keras` save and reload inside a functional model: same outputs.
    """
    rng = np.random.default_rng(0)

    # Config round trip.
    layer = cls(**init_kwargs)
    config = layer.get_config()
    assert cls.from_config(config).get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"keras_encoder>{cls.__name__}"
    clone = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(clone, cls) and clone.get_config() == config

    # Symbolic vs eager shapes.
    for symbolic_shape in ((3, 7, width), (None, None, width)):
        symbolic = _outputs(
            cls(**init_kwargs), keras.KerasTensor(symbolic_shape)
        )
        assert tuple(symbolic.shape) == symbolic_shape
    for length in (7, 4):
        x = rng.normal(size=(3, length, width)).astype("float32")
        eager = _outputs(layer, x)
        assert tuple(eager.shape) == x.shape
        assert layer.compute_output_shape(x.shape) == x.shape

    # One training step.
    inputs = keras.Input((None, width))
    model = keras.Model(inputs, _outputs(cls(**init_kwargs), inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = rng.normal(size=(4, 6, width)).astype("float32")
    y = rng.normal(size=(4, 6, width)).astype("float32")
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for w, old in zip(model.trainable_weights, before, strict=True):
        if w.path.endswith("key/bias"):
            # q . b_k is the same for every key of a query, so softmax
            # cancels it: its gradient is zero by construction.
            continue
        assert not np.allclose(w.numpy(), old), f"{w.path} did not train"

    # Mixed precision.
    for policy in ("mixed_float16", "mixed_bfloat16"):
        mixed = cls(**init_kwargs, dtype=policy)
        out = _outputs(mixed, x)
        assert keras.backend.standardize_dtype(out.dtype) == policy[6:]
        assert all(w.dtype == "float32" for w in mixed.weights)
        assert np.isfinite(
            keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))
        ).all()

    # .keras save and reload.
    if tmp_path is not None:
        path = os.path.join(tmp_path, "layer.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
        np.testing.assert_array_equal(
            model.predict(x, verbose=0), reloaded.predict(x, verbose=0)
        )


PUBLIC_LAYERS = (
    keras_encoder.AlibiBias,
    keras_encoder.MultiHeadSelfAttention,
    keras_encoder.PositionalEncoding,
    keras_encoder.EncoderBlock,
    keras_encoder.SentencePooling,
)


def checkpoint_copy(checkpoint, tmp_path, weights=None, config=None):
    """A copy of the safetensors checkpoint directory `checkpoint` at
    `tmp_path / "checkpoint"`, with `weights` ({name: array} -> {name:
    array}) applied to its tensors and `config` (dict -> dict) to its
    config.json."""
    from safetensors.numpy import load_file
    from safetensors.numpy import save_file

    target = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, target)
    if weights is not None:
        tensors = weights(load_file(target / "model.safetensors"))
        save_file(tensors, target / "model.safetensors")
    if config is not None:
        changed = config(json.loads((target / "config.json").read_text()))
        (target / "config.json").write_text(json.dumps(changed))
    return target


def check_dynamic_builtin_tflite(path, input_names):
    """The `.tflite` at `path` has builtin ops only and takes `input_names`
    with dynamic batch and sequence axes."""
    from keras_encoder import export

    described = export.describe_tflite(path)
    assert described["builtin_only"], described["ops"]
    shapes = {t["name"]: t["shape"] for t in described["inputs"]}
    assert shapes == {name: [-1, -1] for name in input_names}, shapes
