"""Serializable Keras 3 layers for the Transformer encoder."""

# First: in the `keras-encoder` command, holds what TensorFlow prints while
# it is imported (see _startup).
from keras_encoder import _startup  # noqa: F401
from keras_encoder import convert
from keras_encoder import distribution
from keras_encoder import export
from keras_encoder.alibi_bias import AlibiBias
from keras_encoder.encoder_block import EncoderBlock
from keras_encoder.multi_head_self_attention import MultiHeadSelfAttention
from keras_encoder.positional_encoding import PositionalEncoding
from keras_encoder.sentence_pooling import SentencePooling

__version__ = "0.1.0"

__all__ = [
    "AlibiBias",
    "EncoderBlock",
    "MultiHeadSelfAttention",
    "PositionalEncoding",
    "SentencePooling",
    "__version__",
    "convert",
    "distribution",
    "export",
]
