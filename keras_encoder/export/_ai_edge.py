"""int16x8 TFLite through Google's `ai-edge-quantizer`.

TensorFlow's converter has a 16x8 mode
(`EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8`), but on
TensorFlow 2.21 it fails on these models. `ai-edge-quantizer` quantizes
the float32 flatbuffer instead, after calibrating it in LiteRT: int16
activations (symmetric, one scale per tensor), int8 weights (symmetric,
one scale per output channel), every op it has an integer kernel for.
"""

import contextlib
import io
import os
import warnings

_INSTALL = (
    'quantize="int16x8" needs Google\'s ai-edge-quantizer: '
    "pip install ai-edge-quantizer (or keras-encoder[quantizer])"
)

_INT16_ACTIVATIONS = {
    "regex": ".*",
    "operation": "*",
    "algorithm_key": "min_max_uniform_quantize",
    "op_config": {
        "activation_tensor_config": {
            "num_bits": 16,
            "symmetric": True,
            "granularity": "TENSORWISE",
            "dtype": "INT",
        },
        "weight_tensor_config": {
            "num_bits": 8,
            "symmetric": True,
            "granularity": "CHANNELWISE",
            "dtype": "INT",
        },
        "compute_precision": "INTEGER",
        "explicit_dequantize": False,
        "skip_checks": False,
        "min_weight_elements": 0,
    },
}


def check_quantizer_installed() -> None:
    """Raise an `ImportError` that says what to install, if needed."""
    try:
        import ai_edge_quantizer  # noqa: F401
    except ImportError as error:
        raise ImportError(_INSTALL) from error


def int16x8(float_flatbuffer: bytes, batches: list[dict]) -> bytes:
    """The int16x8 flatbuffer of `float_flatbuffer` (its serving signature
    calibrated on `batches`, dicts of arrays by input name)."""
    check_quantizer_installed()
    from ai_edge_quantizer import quantizer

    engine = quantizer.Quantizer(float_flatbuffer, [_INT16_ACTIVATIONS])
    # Its progress bars go to stderr, and its calibration warns that it
    # keeps every tensor (it must, to read their ranges): not ours to show.
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "(?s).*experimental_preserve_all_tensors", UserWarning
        )
        ranges = engine.calibrate(
            {"serving_default": batches}, num_threads=os.cpu_count() or 1
        )
        result = engine.quantize(
            ranges, enable_progress_bar=False, enable_progress_report=False
        )
    return bytes(result.quantized_model)
