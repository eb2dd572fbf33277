"""Sublayer factories shared by the public layers."""

import keras

from keras_encoder import _checks


def dense(
    units,
    *,
    name,
    dtype,
    use_bias,
    kernel_initializer,
    bias_initializer,
    activation=None,
):
    """A (B, S, D) -> (B, S, units) projection with an (in, out) kernel.

    EinsumDense, not Dense: on 3-D inputs Dense goes through tensordot,
    whose dynamic-shape bookkeeping adds about 20 ops per projection to
    graphs and TFLite models. It passes masks on, as Dense does.
    """
    layer = keras.layers.EinsumDense(
        "abc,cd->abd",
        output_shape=(None, units),
        activation=activation,
        bias_axes="d" if use_bias else None,
        kernel_initializer=_checks.clone_initializer(kernel_initializer, name),
        bias_initializer=_checks.clone_initializer(bias_initializer, name),
        dtype=dtype,
        name=name,
    )
    layer.supports_masking = True
    return layer
