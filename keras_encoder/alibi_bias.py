import math

import keras
import numpy as np
from keras import ops

from keras_encoder import _checks
from keras_encoder import _masking


def alibi_slopes(num_heads, alibi_bias_max=8.0):
    """(num_heads,) float32 ALiBi slopes, as in Press et al.'s code.

    For a power of two n: `2 ** (-alibi_bias_max * i / n)`, i = 1..n (1/2,
    1/4, ..., 1/256 for 8 heads). Otherwise the slopes of the closest
    smaller power of two, then every other slope of the next one.
    """

    def geometric(n):
        start = 2.0 ** (-alibi_bias_max / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = geometric(closest)
    if closest < num_heads:
        slopes += geometric(2 * closest)[0::2][: num_heads - closest]
    return np.asarray(slopes, dtype="float32")


@keras.saving.register_keras_serializable(package="keras_encoder")
class AlibiBias(keras.layers.Layer):
    """ALiBi attention bias for an encoder: `-slope_h * |i - j|`.

    Attention with linear biases (Press et al., 2022) gives no position to
    the inputs; each head instead penalises attention to distant keys
    linearly, with a head-specific slope. In an encoder the penalty is
    symmetric in the distance. Pass the output to
    `MultiHeadSelfAttention` or `EncoderBlock` as `attention_bias`; one
    `AlibiBias` can feed every block of a stack. The masking contract
    overrides the bias: padded keys get zero weight whatever it says.

    Args:
        num_heads: int, number of attention heads of the layers fed.
        alibi_bias_max: float, the largest slope exponent: slopes are
            `2 ** (-alibi_bias_max * i / num_heads)`. Defaults to `8.0`
            (the paper's value; keras-hub's `alibi_bias_max`).
        **kwargs: base layer arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: the (B, S, D) sequence the attention will see; only its
            length S is read.

    Returns:
        A (1, num_heads, S, S) bias in the layer's compute dtype.

    Example:

    >>> x = np.random.rand(2, 10, 32).astype("float32")
    >>> bias = AlibiBias(num_heads=4)(x)
    >>> tuple(bias.shape)
    (1, 4, 10, 10)
    >>> block = EncoderBlock(num_heads=4, intermediate_dim=64)
    >>> tuple(block(x, attention_bias=bias).shape)
    (2, 10, 32)

    References:
        - [Press et al., 2022](https://arxiv.org/abs/2108.12409)
    """

    def __init__(self, num_heads, alibi_bias_max=8.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = _checks.positive_int("num_heads", num_heads)
        self.alibi_bias_max = _checks.positive_float(
            "alibi_bias_max", alibi_bias_max
        )
        self.slopes = alibi_slopes(self.num_heads, self.alibi_bias_max)
        # The bias is not a sequence: it passes no mask on, but must not
        # warn when its input carries one.
        self.supports_masking = True

    def call(self, inputs):
        _masking.check_inputs(inputs)
        positions = ops.cast(ops.arange(ops.shape(inputs)[1]), "float32")
        distance = ops.abs(
            ops.expand_dims(positions, 1) - ops.expand_dims(positions, 0)
        )  # (S, S)
        slopes = ops.reshape(-self.slopes, (1, self.num_heads, 1, 1))
        bias = slopes * ops.expand_dims(ops.expand_dims(distance, 0), 0)
        return ops.cast(bias, self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        length = input_shape[1]
        return (1, self.num_heads, length, length)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "alibi_bias_max": self.alibi_bias_max,
            }
        )
        return config
