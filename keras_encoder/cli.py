"""The `keras-encoder` command: export a `.keras` model, inspect a `.tflite`.

    keras-encoder export MODEL.keras [--saved-model DIR] [--tflite FILE]
        [--quantize float16|dynamic|int8] [--calibration FILE.npy|.npz]
        [--seq-len N ...]
    keras-encoder inspect FILE.tflite

Bad input (a missing file, not a Keras file, int8 without calibration data,
an unwritable path) prints one line to stderr and exits with status 2,
before anything is written.
"""

import argparse
import os
import sys
import zipfile

import keras
import numpy as np

from keras_encoder import export
from keras_encoder.positional_encoding import PositionalEncoding

USAGE_ERROR = 2


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit status 2."""


def _human(size):
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024


def _check_keras_file(path):
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{path}: not a Keras .keras file (not a zip)")
    with zipfile.ZipFile(path) as archive:
        if "config.json" not in archive.namelist():
            raise UsageError(f"{path}: not a Keras .keras file (no config)")


def _check_writable(path, flag):
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{flag} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{flag} {path}: directory {parent} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: not writable")


def _load_calibration(path, input_names):
    """Calibration batches from `.npy` (one input) or `.npz` (by name)."""
    if not os.path.isfile(path):
        raise UsageError(f"--calibration {path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UsageError(
            f"--calibration {path}: unreadable ({error})"
        ) from None
    if isinstance(data, np.ndarray):  # .npy
        arrays = {None: data}
    else:  # .npz
        with data:
            arrays = {name: data[name] for name in data.files}
    if None in arrays:
        if len(input_names) != 1:
            raise UsageError(
                f"--calibration {path}: the model has inputs {input_names}; "
                "give an .npz with one array per input name"
            )
        arrays = {input_names[0]: arrays[None]}
    missing = set(input_names) - set(arrays)
    if missing:
        raise UsageError(
            f"--calibration {path}: missing arrays for inputs "
            f"{sorted(missing)} (has {sorted(arrays)})"
        )
    counts = {name: len(arrays[name]) for name in input_names}
    if len(set(counts.values())) != 1:
        raise UsageError(
            f"--calibration {path}: inputs hold different numbers of "
            f"examples: {counts}"
        )
    count = counts[input_names[0]]
    if count == 0:
        raise UsageError(f"--calibration {path}: no examples")
    return [
        {name: arrays[name][i : i + 8] for name in input_names}
        for i in range(0, count, 8)
    ]


def _vocabularies(model):
    """{input name: input_dim} for inputs that feed an Embedding directly."""
    inputs = export.model_inputs(model)
    by_tensor = {id(t): name for name, t in inputs.items()}
    sizes = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Embedding):
            continue
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                if id(tensor) in by_tensor:
                    sizes[by_tensor[id(tensor)]] = layer.input_dim
    return sizes


def _sample_inputs(model, length, seed=0):
    """Two example sequences of `length`, the second padded to half.

    Integer inputs whose name contains "mask" get 1 at real positions; other
    integer inputs get ids in [1, n) with 0 as padding, where n is the size
    of the Embedding they feed (2 if none); boolean inputs True/False; float
    inputs normal noise.
    """
    rng = np.random.default_rng(seed)
    vocabularies = _vocabularies(model)
    lengths = np.array([[length], [max(1, length // 2)]])
    real = np.arange(length)[None, :] < lengths
    named = {}
    for name, tensor in export.model_inputs(model).items():
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        shape = (2, length, *tensor.shape[2:])
        if dtype == "bool":
            named[name] = real.copy()
        elif "int" in dtype and "mask" in name:
            named[name] = real.astype(dtype)
        elif "int" in dtype:
            high = max(vocabularies.get(name, 2), 2)
            ids = rng.integers(1, high, size=shape)
            named[name] = np.where(real, ids, 0).astype(dtype)
        else:
            named[name] = rng.normal(size=shape).astype(dtype)
    return named


def _lengths(model, requested):
    """Sequence lengths to check parity at."""
    fixed = {t.shape[1] for t in model.inputs if len(t.shape) > 1}
    fixed.discard(None)
    if fixed:
        conflicting = set(requested or []) - fixed
        if conflicting:
            raise UsageError(
                f"--seq-len {min(conflicting)}: the model's inputs have a "
                f"fixed length {sorted(fixed)}"
            )
        return sorted(fixed)
    limits = [
        layer.max_length
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, PositionalEncoding)
    ]
    longest = min(limits) if limits else None
    if requested:
        too_long = [n for n in requested if longest and n > longest]
        if too_long:
            raise UsageError(
                f"--seq-len {too_long[0]} exceeds the model's max_length "
                f"{longest}"
            )
        return sorted(set(requested))
    return sorted({1, min(16, longest or 16), longest or 64})


def _export(args):
    if not (args.saved_model or args.tflite):
        raise UsageError(
            "nothing to do: give --saved-model DIR and/or --tflite FILE"
        )
    _check_keras_file(args.model)
    if args.quantize and not args.tflite:
        raise UsageError("--quantize needs --tflite FILE")
    if args.quantize == "int8" and not args.calibration:
        raise UsageError(
            "--quantize int8 needs --calibration FILE.npy|.npz (representative "
            "inputs to calibrate activation ranges)"
        )
    if any(n < 1 for n in args.seq_len or []):
        raise UsageError("--seq-len values must be positive")
    for path, flag in (
        (args.saved_model, "--saved-model"),
        (args.tflite, "--tflite"),
    ):
        if path:
            _check_writable(path, flag)

    try:
        model = keras.saving.load_model(args.model)
    except Exception as error:
        raise UsageError(f"{args.model}: cannot load ({error})") from None
    names = export.input_names(model)
    calibration = (
        _load_calibration(args.calibration, names) if args.calibration else None
    )
    lengths = _lengths(model, args.seq_len)

    # TFLite first: a model that needs Flex ops fails before anything is
    # written.
    artifacts = []
    if args.tflite:
        try:
            export.to_tflite(model, args.tflite, args.quantize, calibration)
        except export.FlexOpsError as error:
            raise UsageError(str(error)) from None
        artifacts.append(args.tflite)
    if args.saved_model:
        artifacts.insert(0, export.to_saved_model(model, args.saved_model))

    samples = [(str(n), _sample_inputs(model, n)) for n in lengths]
    if calibration:
        samples.append(("calibration", calibration[0]))
    header = (
        f"{'artifact':<32} {'size':>9} {'inputs':>11} "
        f"{'max|diff|':>10} {'cosine':>9}  builtin-only"
    )
    print(header)
    print("-" * len(header))
    for artifact in artifacts:
        for label, inputs in samples:
            result = export.verify(model, artifact, inputs)
            builtin = {None: "-", True: "yes", False: "no"}[result.builtin_only]
            print(
                f"{artifact:<32} {_human(result.size_bytes):>9} "
                f"{'seq ' + label if label.isdigit() else label:>11} "
                f"{result.max_abs_diff:>10.2e} {result.cosine:>9.6f}  "
                f"{builtin}"
            )
    return 0


def _inspect(args):
    path = args.tflite
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file")
    try:
        described = export.describe_tflite(path)
    except Exception as error:
        raise UsageError(f"{path}: not a TFLite model ({error})") from None
    builtin = "yes" if described["builtin_only"] else "no"
    print(
        f"{path}: {_human(described['size_bytes'])}, builtin ops only: "
        f"{builtin}"
    )
    for key in ("inputs", "outputs"):
        print(f"{key}:")
        for tensor in described[key]:
            print(
                f"  {tensor['name']:<24} {tensor['dtype']:<8} {tensor['shape']}"
            )
    ops = described["ops"]
    print(f"ops ({len(ops)} kinds, {sum(ops.values())} in all):")
    for name, count in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {name:<24} {count}")
    return 0


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-encoder",
        description="Export Keras encoder models to SavedModel and TFLite.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser(
        "export", help="export a .keras model and print a parity table"
    )
    export.add_argument("model", metavar="MODEL.keras")
    export.add_argument("--saved-model", metavar="DIR")
    export.add_argument("--tflite", metavar="FILE")
    export.add_argument(
        "--quantize", choices=["float16", "dynamic", "int8"], default=None
    )
    export.add_argument("--calibration", metavar="FILE.npy|.npz")
    export.add_argument(
        "--seq-len",
        type=int,
        nargs="+",
        metavar="N",
        help="sequence lengths to check parity at (default: 1, 16 and the "
        "model's max_length, or 64 without one)",
    )
    export.set_defaults(run=_export)
    inspect = commands.add_parser(
        "inspect", help="show a .tflite model's signature and ops"
    )
    inspect.add_argument("tflite", metavar="FILE.tflite")
    inspect.set_defaults(run=_inspect)
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except UsageError as error:
        print(f"keras-encoder: error: {error}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
