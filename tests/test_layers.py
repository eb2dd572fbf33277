"""The generic checks (tests/helpers.py), over every layer and option."""

import pytest

from keras_encoder import EncoderBlock
from keras_encoder import MultiHeadSelfAttention
from keras_encoder import PositionalEncoding
from tests.helpers import run_layer_test

CASES = [
    (MultiHeadSelfAttention, {"num_heads": 4}),
    (
        MultiHeadSelfAttention,
        {
            "num_heads": 3,
            "key_dim": 5,
            "value_dim": 7,
            "use_bias": False,
            "dropout": 0.1,
        },
    ),
    (
        MultiHeadSelfAttention,
        {
            "num_heads": 2,
            "rotary_max_wavelength": 10000.0,
            "rotary_fraction": 0.5,
            "sliding_window": 3,
        },
    ),
    (PositionalEncoding, {"max_length": 8}),
    (PositionalEncoding, {"max_length": 8, "mode": "learned"}),
    (EncoderBlock, {"num_heads": 2, "intermediate_dim": 32}),
    (
        EncoderBlock,
        {
            "num_heads": 4,
            "intermediate_dim": 8,
            "norm_first": True,
            "activation": "gelu",
            "dropout": 0.1,
            "attention_dropout": 0.1,
            "key_dim": 3,
        },
    ),
    (
        EncoderBlock,
        {
            "num_heads": 2,
            "intermediate_dim": 12,
            "norm_first": True,
            "use_bias": False,
            "feedforward": "geglu",
            "normalization": "rms_norm",
            "attention_norm": False,
            "rotary_max_wavelength": 160000.0,
            "sliding_window": 2,
        },
    ),
    (
        EncoderBlock,
        {
            "num_heads": 4,
            "intermediate_dim": 8,
            "feedforward": "swiglu",
            "norm_bias": False,
            "dropout": 0.1,
        },
    ),
]


@pytest.mark.parametrize(
    "cls,kwargs",
    CASES,
    ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(CASES)],
)
def test_generic_layer_checks(cls, kwargs, tmp_path):
    run_layer_test(cls, kwargs, tmp_path=tmp_path)
