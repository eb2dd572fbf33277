import keras
from keras import ops

from keras_encoder import _checks
from keras_encoder import _lowering
from keras_encoder import _masking

POOLING_MODES = ("mean", "cls")


def _weighted_mean(states, real):
    """The mean of `states` (B, S, H) over the real positions `real` (B, S)
    as `sum(states * w)` with `w` a softmax over 0 at real and -1e4 at
    padded positions, for integer quantization (see `_lowering`); 0 for a
    sequence with no real token."""
    if real is None:
        real = ops.ones(ops.shape(states)[:2], "bool")
    weights = ops.softmax(ops.where(real, 0.0, -1e4), axis=-1)  # (B, S)
    weights = ops.where(ops.any(real, axis=-1, keepdims=True), weights, 0.0)
    keep = ops.expand_dims(real, -1)  # (B, S, 1)
    # `where` first: a padded state is never multiplied (0 * inf is NaN).
    states = ops.where(keep, states, 0.0)
    return ops.sum(states * ops.expand_dims(weights, -1), axis=1)


@keras.saving.register_keras_serializable(package="keras_encoder")
class SentencePooling(keras.layers.Layer):
    """Sentence embedding from token states, as sentence-transformers does.

    `"mean"`: the mean over real tokens (`mask` True), 0 for a sequence
    with none. `"cls"`: the state at position 0, 0 where position 0 is
    padded (a sequence with no real token). Then, with `normalize`, L2
    normalisation (`x / max(|x|, 1e-12)`). Computed in float32, also under
    mixed precision. Padded states never reach the result, whatever they
    hold (inf and NaN included), and a zero-length sequence gives 0.

    Args:
        pooling: `"mean"` or `"cls"`. Defaults to `"mean"`.
        normalize: bool. Defaults to `True`.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: (B, S, H) token states.
        mask: (B, S) boolean or integer, True/1 at real tokens; ANDed with
            the implicit Keras mask.

    Returns:
        (B, H) sentence embeddings.
    """

    def __init__(self, pooling="mean", normalize=True, **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLING_MODES:
            raise _checks.invalid("pooling", f"one of {POOLING_MODES}", pooling)
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        _masking.check_inputs(inputs)
        _masking.check_padding_masks(inputs, mask)
        # In float32 under mixed precision too: 1e-12 is 0 in float16.
        states = ops.cast(inputs, "float32")
        real = _masking.padding_mask(inputs, mask)  # (B, S) or None
        if self.pooling == "cls":
            # A sum over positions, not a gather: also 0 for zero length.
            keep = ops.equal(ops.arange(ops.shape(inputs)[1]), 0)  # (S,)
            keep = ops.expand_dims(keep, 0)  # (1, S)
            if real is not None:
                keep = ops.logical_and(keep, real)
            pooled = ops.sum(
                ops.where(ops.expand_dims(keep, -1), states, 0.0), axis=1
            )
        elif _lowering.is_integer_friendly():
            pooled = _weighted_mean(states, real)
        else:
            if real is None:
                total = ops.sum(states, axis=1)
                count = ops.cast(ops.shape(inputs)[1], "float32")
            else:
                weights = ops.expand_dims(real, -1)  # (B, S, 1)
                # `where`, not a product: 0 * inf would be NaN.
                total = ops.sum(ops.where(weights, states, 0.0), axis=1)
                count = ops.sum(ops.cast(weights, "float32"), axis=1)
            # The count is a whole number: max(count, 1) equals
            # sentence-transformers' clamp(min=1e-9) except where no
            # token is real, and gives 0 there (and for zero length), not
            # 0 / 0.
            pooled = total / ops.maximum(count, 1.0)
        if self.normalize and _lowering.is_integer_friendly():
            squares = ops.sum(ops.square(pooled), axis=-1, keepdims=True)
            pooled = pooled * ops.rsqrt(ops.maximum(squares, 1e-12))
        elif self.normalize:
            # A zero vector stays 0 (sentence-transformers divides by
            # max(norm, 1e-12)). No tiny constant: a float16 TFLite export
            # stores 1e-12 as 0 and computed 0 / 0 = NaN; and no sqrt(0),
            # whose gradient is inf.
            squares = ops.sum(ops.square(pooled), axis=-1, keepdims=True)
            positive = ops.greater(squares, 0.0)
            pooled = pooled / ops.sqrt(ops.where(positive, squares, 1.0))
        return ops.cast(pooled, self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"pooling": self.pooling, "normalize": self.normalize})
        return config
