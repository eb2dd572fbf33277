"""Export Keras models to SavedModel (TF Serving), TFLite (LiteRT) and ONNX.

One module per format, each with its `to_<format>` function:
`saved_model` (`to_saved_model`), `tflite` (`to_tflite`, builtin ops
only, with float16, dynamic-range, int8 and int16x8 quantization, the
last through `ai-edge-quantizer` (`check_quantizer_installed`);
`describe_tflite`, the op listing, and `tflite_precision`, the ops left
in float) and `onnx` (`to_onnx` through tf2onnx). `run_artifact` runs
any of them on CPU; `verify` runs an artifact and the Keras model on the
same inputs (e.g. `sample_inputs`) and reports their agreement at real
(unmasked) positions.

Shared by all formats: destinations are checked before any work
(`check_destination`): an existing artifact of the same kind, an empty
file or an empty directory is replaced; anything else is refused with a
`FileExistsError`, so an export never deletes what it did not write.
Artifacts are written under a temporary name beside the target and
renamed into place (`Staging`), so a failure (or Ctrl-C) never leaves a
half-written artifact or a temporary file behind; installed, they get the
modes of a plain write under the umask (or keep those of the artifact
they replace). The model's signature (`model_inputs`, `input_names`,
`vocabularies`, `max_length`) names the inputs and bounds int8 and
int16x8 calibration data (`calibration_batches`); Functional and Sequential
models have one, a subclassed model is refused up front.

The lower-level pieces (`tflite_bytes`, `onnx_bytes`, `write_saved_model`,
`Staging`, `destination_problem`, `check_calibration_batch`) let a caller
such as the `keras-encoder` command stage several artifacts, check them
all, and only then install them.
"""

from keras_encoder.export._ai_edge import check_quantizer_installed
from keras_encoder.export._calibration import calibration_batches
from keras_encoder.export._calibration import check_calibration_batch
from keras_encoder.export._destination import check_destination
from keras_encoder.export._destination import destination_problem
from keras_encoder.export._signature import input_names
from keras_encoder.export._signature import max_length
from keras_encoder.export._signature import model_inputs
from keras_encoder.export._signature import vocabularies
from keras_encoder.export._staging import Staging
from keras_encoder.export._verification import Verification
from keras_encoder.export._verification import run_artifact
from keras_encoder.export._verification import sample_inputs
from keras_encoder.export._verification import verify
from keras_encoder.export.onnx import ONNX_OPSET
from keras_encoder.export.onnx import onnx_bytes
from keras_encoder.export.onnx import onnx_ops
from keras_encoder.export.onnx import to_onnx
from keras_encoder.export.saved_model import to_saved_model
from keras_encoder.export.saved_model import write_saved_model
from keras_encoder.export.tflite import CALIBRATED_MODES
from keras_encoder.export.tflite import QUANTIZE_MODES
from keras_encoder.export.tflite import FlexOpsError
from keras_encoder.export.tflite import describe_tflite
from keras_encoder.export.tflite import flex_hint
from keras_encoder.export.tflite import is_builtin_only
from keras_encoder.export.tflite import litert_runner
from keras_encoder.export.tflite import tflite_bytes
from keras_encoder.export.tflite import tflite_ops
from keras_encoder.export.tflite import tflite_precision
from keras_encoder.export.tflite import to_tflite

__all__ = [
    "CALIBRATED_MODES",
    "ONNX_OPSET",
    "QUANTIZE_MODES",
    "FlexOpsError",
    "Staging",
    "Verification",
    "calibration_batches",
    "check_calibration_batch",
    "check_destination",
    "check_quantizer_installed",
    "describe_tflite",
    "destination_problem",
    "flex_hint",
    "input_names",
    "is_builtin_only",
    "litert_runner",
    "max_length",
    "model_inputs",
    "onnx_bytes",
    "onnx_ops",
    "run_artifact",
    "sample_inputs",
    "tflite_bytes",
    "tflite_ops",
    "tflite_precision",
    "to_onnx",
    "to_saved_model",
    "to_tflite",
    "verify",
    "vocabularies",
    "write_saved_model",
]
