import keras
import numpy as np
from keras import ops

from keras_encoder import _checks
from keras_encoder import _masking

MODES = ("sinusoidal", "learned")


def sinusoid_table(length: int, width: int) -> np.ndarray:
    """The (length, width) float32 sinusoid table of Vaswani et al. (2017).

    `PE[pos, 2i] = sin(pos / 10000^(2i / width))` and
    `PE[pos, 2i + 1] = cos(pos / 10000^(2i / width))`, computed in float64
    and rounded once to float32.
    """
    pair = np.arange(width) // 2 * 2
    angles = np.arange(length)[:, None] * np.power(10000.0, -pair / width)
    table = np.where(np.arange(width) % 2 == 0, np.sin(angles), np.cos(angles))
    return table.astype("float32")


@keras.saving.register_keras_serializable(package="keras_encoder")
class PositionalEncoding(keras.layers.Layer):
    """Adds position information to a sequence of feature vectors.

    With `mode="sinusoidal"` it adds the fixed sinusoid table of Vaswani
    et al. (2017): sine on even feature indices, cosine on odd ones. The
    table is computed once when the layer is built (in float64, stored as a
    float32 constant, not a weight) and cast to the compute dtype, so mixed
    precision never computes positions in half precision, and int8 TFLite
    quantizes it as a constant instead of computing it from quantized
    angles. With `mode="learned"` it adds rows of a trainable
    (max_length, D) table.
    Either way the sequence length may be unknown until run time, up to
    `max_length`; a longer sequence raises a `ValueError` where its length
    is known when the layer is called (always in eager mode and for the
    static shapes Keras traces).

    The input's mask (for example from `Embedding(mask_zero=True)`) is
    passed on unchanged; positions are added at padded steps too, which
    cannot affect real positions downstream under the masking contract.

    Args:
        max_length: int, the longest sequence the layer accepts.
        mode: `"sinusoidal"` or `"learned"`. Defaults to `"sinusoidal"`.
        embeddings_initializer: initializer for the learned table; unused
            in sinusoidal mode. Defaults to `"glorot_uniform"`.
        **kwargs: base layer arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: float tensor of shape (B, S, D) with S <= max_length.

    Returns:
        A tensor of the input's shape: `inputs` plus the position table's
        first S rows.

    Example:

    >>> embed = keras.layers.Embedding(1000, 32, mask_zero=True)
    >>> x = PositionalEncoding(max_length=64)(embed(np.array([[5, 8, 0]])))
    >>> tuple(x.shape)
    (1, 3, 32)

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
    """

    def __init__(
        self,
        max_length,
        mode="sinusoidal",
        embeddings_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.max_length = _checks.positive_int("max_length", max_length)
        if mode not in MODES:
            raise _checks.invalid("mode", f"one of {MODES}", mode)
        self.mode = mode
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer
        )
        self.supports_masking = True

    def _check_length(self, length):
        if length is not None and length > self.max_length:
            raise ValueError(
                f"The input sequence length {length} exceeds max_length="
                f"{self.max_length} of layer '{self.name}'. Truncate the "
                "inputs or build the layer with a larger max_length."
            )

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                "Expected `inputs` of rank 3, (batch, sequence, features), "
                f"with a known feature size. Received: input_shape="
                f"{tuple(input_shape)}"
            )
        self._check_length(input_shape[1])
        if self.mode == "sinusoidal":
            # A constant, not a weight: a table computed at run time from
            # the positions would be quantized (and wrecked) by int8 TFLite.
            self._sinusoid = sinusoid_table(self.max_length, input_shape[-1])
        else:
            self.position_embeddings = self.add_weight(
                name="position_embeddings",
                shape=(self.max_length, input_shape[-1]),
                initializer=_checks.clone_initializer(
                    self.embeddings_initializer
                ),
                trainable=True,
            )
        self.input_spec = keras.InputSpec(axes={-1: input_shape[-1]})
        self.built = True

    def call(self, inputs, mask=None):
        _masking.check_inputs(inputs)
        self._check_length(inputs.shape[1])
        # S from the padding mask when there is one: the blocks after this
        # layer read it there too, so a graph computes it once.
        _masking.check_padding_masks(inputs, mask)
        source = _masking.first_padding_mask(inputs, mask)
        source = inputs if source is None else source
        length, width = ops.shape(source)[1], inputs.shape[-1]
        table = ops.convert_to_tensor(
            self.position_embeddings
            if self.mode == "learned"
            else self._sinusoid
        )
        table = ops.slice(table, (0, 0), (length, width))
        return inputs + ops.cast(table, inputs.dtype)

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        self._check_length(input_shape[1])
        return tuple(input_shape)

    def compute_output_spec(self, inputs, mask=None):
        _masking.check_inputs(inputs)
        return keras.KerasTensor(
            self.compute_output_shape(inputs.shape), dtype=self.compute_dtype
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_length": self.max_length,
                "mode": self.mode,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
            }
        )
        return config
