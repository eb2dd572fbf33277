"""Argument checks shared by the layers.

Each raises `ValueError` in Keras's form, naming the argument and the value
received, so a bad configuration fails at construction, not deep in a graph.
"""

import numbers
import zlib

import keras


def invalid(name, expected, value):
    return ValueError(
        f"Received an invalid value for argument `{name}`: expected "
        f"{expected}. Received: {name}={value!r}"
    )


def _real(value, kind=numbers.Real):
    """Whether `value` is a number of `kind` (bools are not numbers here)."""
    return isinstance(value, kind) and not isinstance(value, bool)


def positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if not _real(value, numbers.Integral) or value <= 0:
        raise invalid(name, "a positive integer", value)
    return int(value)


def rate(name, value):
    if not _real(value) or not 0.0 <= value < 1.0:
        raise invalid(name, "a float in [0, 1)", value)
    return float(value)


def positive_float(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if not _real(value) or not 0.0 < value < float("inf"):
        raise invalid(name, "a positive float", value)
    return float(value)


def boolean(name, value):
    if not isinstance(value, bool):
        raise invalid(name, "True or False", value)
    return value


def fraction(name, value):
    if not _real(value) or not 0.0 < value <= 1.0:
        raise invalid(name, "a float in (0, 1]", value)
    return float(value)


def _rotary_max_wavelength(value):
    if value is None:
        return None
    if not _real(value) or not 1.0 < value < float("inf"):
        raise invalid(
            "rotary_max_wavelength", "None or a finite float > 1", value
        )
    return float(value)


# The attention options that `EncoderBlock` forwards to its
# `MultiHeadSelfAttention` unchanged: in both layers the same constructor
# argument (name and default), attribute and config key, checked here.
# A new attention option is one entry here, its argument and docstring in
# both signatures, and its use in `MultiHeadSelfAttention`.
ATTENTION_OPTIONS = {
    "key_dim": (None, lambda v: positive_int("key_dim", v, True)),
    "flash_attention": (None, lambda v: optional_bool("flash_attention", v)),
    "rotary_max_wavelength": (None, _rotary_max_wavelength),
    "rotary_fraction": (1.0, lambda v: fraction("rotary_fraction", v)),
    "sliding_window": (
        None,
        lambda v: positive_int("sliding_window", v, True),
    ),
}


def attention_options(arguments):
    """The `ATTENTION_OPTIONS` found in `arguments` (a layer constructor's
    `locals()`), checked: {name: value}."""
    return {
        name: check(arguments[name])
        for name, (_, check) in ATTENTION_OPTIONS.items()
    }


def attention_config(layer):
    """{name: value} of `layer`'s `ATTENTION_OPTIONS`: for its config, and
    what `EncoderBlock` passes on to its attention."""
    return {name: getattr(layer, name) for name in ATTENTION_OPTIONS}


def lora_options(lora_rank, lora_alpha):
    """(lora_rank, lora_alpha), checked."""
    return (
        positive_int("lora_rank", lora_rank, True),
        positive_float("lora_alpha", lora_alpha, True),
    )


def choice(name, value, choices):
    if value not in choices:
        raise invalid(name, f"one of {choices}", value)
    return value


def optional_bool(name, value):
    if value is not None and not isinstance(value, bool):
        raise invalid(name, "None, True or False", value)
    return value


def fused_without_dropout(value, dropout_name, dropout):
    """Refuse `flash_attention=True` with attention dropout
    (`dropout_name` = `dropout`), which the fused kernel lacks."""
    if value and dropout > 0:
        raise ValueError(
            "Received an invalid value for argument `flash_attention`: the "
            "fused kernel cannot apply attention dropout, so "
            f"flash_attention=True needs {dropout_name}=0. Received: "
            f"flash_attention=True, {dropout_name}={dropout}"
        )
    return value


def activation(value):
    try:
        fn = keras.activations.get(value)
    except (ValueError, TypeError):
        fn = None
    if fn is None or value is None:
        raise invalid(
            "activation",
            "a Keras activation name such as 'relu' or 'gelu', or a callable",
            value,
        )
    return fn


def clone_initializer(initializer, salt=""):
    """A fresh copy for one sublayer.

    A seeded initializer is copied with its seed offset by a hash of `salt`
    (the sublayer's name), so that, e.g., the query, key and value kernels
    of one layer do not start equal; the result stays reproducible. Any
    other callable `(shape, dtype=None)` is used as it is, as
    `keras.layers.Dense` and keras-hub's `clone_initializer` do.
    """
    if not isinstance(initializer, keras.initializers.Initializer):
        return initializer
    config = initializer.get_config()
    if isinstance(config.get("seed"), int) and salt:
        config["seed"] += zlib.crc32(salt.encode()) % 2**16
    return initializer.__class__.from_config(config)
