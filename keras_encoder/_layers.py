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
    """A (N, D) -> (N, units) projection with an (in, out) kernel.

    Call it on 2-D rows: the layers flatten (B, S, D) to (B * S, D) once.
    On 2-D inputs `Dense` is one MatMul (one FULLY_CONNECTED in TFLite),
    which TensorFlow runs on its fast GEMM with oneDNN on or off. On 3-D
    inputs `Dense` goes through tensordot (about 20 shape ops per
    projection in TFLite), and `EinsumDense("abc,cd->abd")` becomes a
    broadcasting BatchMatMulV2, which Eigen (oneDNN off) runs at about 60%
    of a MatMul's speed.
    """
    return keras.layers.Dense(
        units,
        activation=activation,
        use_bias=use_bias,
        kernel_initializer=_checks.clone_initializer(kernel_initializer, name),
        bias_initializer=_checks.clone_initializer(bias_initializer, name),
        dtype=dtype,
        name=name,
    )
