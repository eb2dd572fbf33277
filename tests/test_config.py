"""Constructor arguments: all in get_config, bad ones rejected clearly."""

import inspect
import re

import keras
import pytest

import keras_encoder
from keras_encoder import AlibiBias
from keras_encoder import EncoderBlock
from keras_encoder import MultiHeadSelfAttention
from keras_encoder import PositionalEncoding
from keras_encoder import SentencePooling
from keras_encoder._checks import ATTENTION_OPTIONS
from tests.helpers import PUBLIC_LAYERS

REQUIRED = {
    AlibiBias: {"num_heads": 2},
    MultiHeadSelfAttention: {"num_heads": 2},
    PositionalEncoding: {"max_length": 4},
    EncoderBlock: {"num_heads": 2, "intermediate_dim": 4},
    SentencePooling: {},
}


def test_public_api():
    assert sorted(keras_encoder.__all__) == sorted(
        [
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
    )
    assert keras_encoder.__version__


@pytest.mark.parametrize("cls", PUBLIC_LAYERS, ids=lambda c: c.__name__)
def test_get_config_covers_every_constructor_argument(cls):
    params = [
        p
        for p in inspect.signature(cls.__init__).parameters
        if p not in ("self", "kwargs")
    ]
    config = cls(**REQUIRED[cls]).get_config()
    assert set(params) <= set(config), set(params) - set(config)
    for name in REQUIRED[cls]:
        assert config[name] == REQUIRED[cls][name]


@pytest.mark.parametrize(
    "cls", [MultiHeadSelfAttention, EncoderBlock], ids=lambda c: c.__name__
)
def test_attention_options_are_declared_once(cls):
    """The options EncoderBlock forwards to its attention are arguments of
    both layers with the table's defaults, and reach the attention."""
    params = inspect.signature(cls.__init__).parameters
    for name, (default, _) in ATTENTION_OPTIONS.items():
        assert params[name].default == default, name
    options = {
        "key_dim": 4,
        "flash_attention": False,
        "rotary_max_wavelength": 500.0,
        "rotary_fraction": 0.5,
        "sliding_window": 3,
    }
    assert set(options) == set(ATTENTION_OPTIONS)
    layer = cls(**REQUIRED[cls], **options)
    assert {k: layer.get_config()[k] for k in options} == options
    if cls is EncoderBlock:
        layer.build((None, None, 8))
        config = layer.attention.get_config()
        assert {k: config[k] for k in options} == options


@pytest.mark.parametrize("cls", PUBLIC_LAYERS, ids=lambda c: c.__name__)
def test_non_default_config_round_trips(cls):
    """Every argument, set away from its default, survives the round trip."""
    non_default = {
        "key_dim": 3,
        "value_dim": 5,
        "dropout": 0.25,
        "use_bias": False,
        "kernel_initializer": keras.initializers.HeNormal(seed=3),
        "bias_initializer": "ones",
        "attention_dropout": 0.125,
        "activation": "gelu",
        "norm_first": True,
        "layer_norm_epsilon": 1e-6,
        "mode": "learned",
        "embeddings_initializer": keras.initializers.RandomNormal(0.0, 0.02),
        "pooling": "cls",
        "normalize": False,
        # True needs dropout 0 (tested below); False is also not the default.
        "flash_attention": False,
        "rotary_max_wavelength": 500.0,
        "rotary_fraction": 0.5,
        "sliding_window": 3,
        "feedforward": "geglu",
        "normalization": "rms_norm",
        "norm_bias": False,
        "attention_norm": False,
        "alibi_bias_max": 4.0,
        "lora_rank": 2,
        "lora_alpha": 4.0,
    }
    params = inspect.signature(cls.__init__).parameters
    kwargs = {
        **REQUIRED[cls],
        **{k: v for k, v in non_default.items() if k in params},
    }
    assert set(kwargs) == set(params) - {"self", "kwargs"}
    config = cls(**kwargs).get_config()
    restored = cls.from_config(config)
    assert restored.get_config() == config
    for name, value in kwargs.items():
        if name.endswith("_initializer"):
            assert config[name] == keras.initializers.serialize(
                keras.initializers.get(value)
            ), name
        elif name == "activation":
            assert config[name] == "gelu"
        else:
            assert config[name] == value, name


# (layer, argument, bad value, what the message says is expected): the
# layer's required arguments with that one argument set to that value.
ACTIVATION = "a Keras activation name such as .relu. or .gelu., or a callable"
WAVELENGTH = "None or a finite float > 1"
FEEDFORWARD = r"one of \('mlp', 'geglu', 'swiglu'\)"
NORMALIZATION = r"one of \('layer_norm', 'rms_norm'\)"
BAD_ARGUMENTS = [
    (MultiHeadSelfAttention, "num_heads", 0, r"a positive integer"),
    (MultiHeadSelfAttention, "num_heads", 2.5, r"a positive integer"),
    (MultiHeadSelfAttention, "key_dim", -1, r"a positive integer"),
    (MultiHeadSelfAttention, "value_dim", 0, r"a positive integer"),
    (MultiHeadSelfAttention, "dropout", 1.0, r"a float in \[0, 1\)"),
    (EncoderBlock, "num_heads", -2, r"a positive integer"),
    (EncoderBlock, "intermediate_dim", 0, r"a positive integer"),
    (EncoderBlock, "activation", "nope", ACTIVATION),
    (EncoderBlock, "activation", 3, ACTIVATION),
    (MultiHeadSelfAttention, "rotary_max_wavelength", 1.0, WAVELENGTH),
    (EncoderBlock, "rotary_max_wavelength", "x", WAVELENGTH),
    (MultiHeadSelfAttention, "rotary_fraction", 0.0, r"a float in \(0, 1\]"),
    (EncoderBlock, "rotary_fraction", 1.5, r"a float in \(0, 1\]"),
    (MultiHeadSelfAttention, "sliding_window", 0, r"a positive integer"),
    (EncoderBlock, "feedforward", "glu", FEEDFORWARD),
    (EncoderBlock, "normalization", "batch", NORMALIZATION),
    (EncoderBlock, "norm_bias", 1, r"None, True or False"),
    (AlibiBias, "num_heads", 0, r"a positive integer"),
    (AlibiBias, "alibi_bias_max", -1, r"a positive float"),
    (AlibiBias, "alibi_bias_max", float("inf"), r"a positive float"),
    (EncoderBlock, "attention_norm", "no", r"True or False"),
    (EncoderBlock, "attention_dropout", -0.1, r"a float in \[0, 1\)"),
    (EncoderBlock, "layer_norm_epsilon", 0, r"a positive float"),
    (MultiHeadSelfAttention, "flash_attention", "yes", r"None, True or False"),
    (EncoderBlock, "flash_attention", 1, r"None, True or False"),
    (PositionalEncoding, "max_length", 0, r"a positive integer"),
    (
        PositionalEncoding,
        "mode",
        "rotary",
        r"one of \('sinusoidal', 'learned'\)",
    ),
]


@pytest.mark.parametrize("cls,name,value,expected", BAD_ARGUMENTS)
def test_bad_arguments_raise_value_error(cls, name, value, expected):
    message = (
        rf"Received an invalid value for argument `{name}`: expected "
        rf"{expected}. Received: {name}={re.escape(repr(value))}$"
    )
    with pytest.raises(ValueError, match=message):
        cls(**{**REQUIRED[cls], name: value})


def test_block_checks_width_against_heads_at_build():
    block = EncoderBlock(num_heads=3, intermediate_dim=8)
    with pytest.raises(
        ValueError,
        match=r"width 8 must be divisible by "
        r"num_heads .* Received: num_heads=3",
    ):
        block.build((None, None, 8))


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (MultiHeadSelfAttention, {"num_heads": 2, "dropout": 0.1}),
        (
            EncoderBlock,
            {"num_heads": 2, "intermediate_dim": 4, "attention_dropout": 0.1},
        ),
    ],
)
def test_flash_attention_refuses_attention_dropout(cls, kwargs):
    with pytest.raises(
        ValueError,
        match=r"argument `flash_attention`: the fused kernel cannot apply "
        r"attention dropout, so flash_attention=True needs "
        r"(attention_)?dropout=0. Received: flash_attention=True, "
        r"(attention_)?dropout=0.1$",
    ):
        cls(**kwargs, flash_attention=True)


def test_rms_norm_has_no_bias():
    with pytest.raises(
        ValueError,
        match=r"argument `norm_bias`: normalization=\"rms_norm\" has no "
        r"bias. Received: norm_bias=True$",
    ):
        EncoderBlock(2, 4, normalization="rms_norm", norm_bias=True)
    # norm_bias=None (following use_bias=True) quietly means no bias.
    assert not EncoderBlock(2, 4, normalization="rms_norm").norm_bias


def test_rotary_needs_two_features_to_rotate():
    layer = MultiHeadSelfAttention(
        4, rotary_max_wavelength=1e4, rotary_fraction=0.25
    )
    with pytest.raises(
        ValueError,
        match=r"`rotary_fraction`: it leaves 0 of the 4 features of a head "
        r"to rotate \(at least 2 are needed\). Received: "
        r"rotary_fraction=0.25$",
    ):
        layer.build((None, None, 16))


def test_rotated_feature_count_tolerates_float_error():
    from keras_encoder import _rotary

    assert _rotary.rotary_dim(100, 0.58) == 58  # 100 * 0.58 = 57.999...
    assert _rotary.rotary_dim(64, 0.25) == 16
    assert _rotary.rotary_dim(10, 0.3) == 2


def test_configs_from_before_norm_bias_keep_norm_biases():
    """A block saved with use_bias=False before `norm_bias` existed had
    norms with a bias: from_config keeps them, so its weights load."""
    config = EncoderBlock(2, 4, use_bias=False).get_config()
    for new in ("feedforward", "normalization", "norm_bias", "attention_norm"):
        del config[new]
    block = EncoderBlock.from_config(config)
    block.build((None, None, 8))
    assert block.attention_layer_norm.beta is not None
    assert EncoderBlock(2, 4, use_bias=False).norm_bias is False
    # A new-style config without norm_bias follows the constructor.
    config = {"num_heads": 2, "intermediate_dim": 4, "use_bias": False}
    for normalization in ("layer_norm", "rms_norm"):
        config["normalization"] = normalization
        assert EncoderBlock.from_config(config).norm_bias is False
