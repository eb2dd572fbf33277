"""The `keras-encoder` command: export a `.keras` model, inspect a `.tflite`.

    keras-encoder export MODEL.keras [--saved-model DIR] [--tflite FILE]
        [--onnx FILE] [--quantize float16|dynamic|int8|int16x8]
        [--calibration FILE.npy|.npz] [--seq-len N ...]
    keras-encoder inspect FILE.tflite

Bad input (a missing file, not a Keras file, int8 or int16x8 without
calibration data, int16x8 without ai-edge-quantizer,
bad calibration data, an unwritable path, a destination that holds
something other than an artifact of the same kind, the same path twice)
prints one line to stderr and exits with status 2, before anything is
written. All artifacts are written to temporary names, checked, and only
then renamed into place, so any failure (or Ctrl-C, exit status 130)
leaves the destinations as they were and no temporary file behind.
`inspect` refuses a file that is not a TFLite flatbuffer the same way.
When stdout is a pipe whose reader has gone (`... | head -1`), the command
stops quietly with status 141, as a tool killed by SIGPIPE would.
"""

import argparse
import contextlib
import importlib.util
import itertools
import os
import pathlib
import signal
import sys
import zipfile

import keras
import numpy as np

from keras_encoder import _startup
from keras_encoder import export

USAGE_ERROR = 2
INTERRUPTED = _startup.INTERRUPTED
# 128 + SIGPIPE: what a shell reports for a tool killed by a closed pipe.
BROKEN_PIPE = 141
# Bytes 4 to 7 of a TFLite model: its flatbuffer file identifier.
TFLITE_IDENTIFIER = b"TFL3"


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


def _outputs(args):
    """The artifacts asked for, (flag, path, kind), SavedModel first."""
    return [
        (flag, path, kind)
        for path, flag, kind in (
            (args.saved_model, "--saved-model", "saved_model"),
            (args.tflite, "--tflite", "tflite"),
            (args.onnx, "--onnx", "onnx"),
        )
        if path is not None
    ]


def _replaces(kind, target, other):
    """Whether an artifact of `kind` written at `target` replaces `other`
    (real paths): the same path, or inside a SavedModel directory."""
    return other == target or (
        kind == "saved_model" and os.path.commonpath([other, target]) == target
    )


def _check_destinations(args):
    """Refuse, before any work, destinations that conflict, cannot be
    written, or hold something an export must not replace."""
    outputs = _outputs(args)
    for flag, path, _ in outputs:
        if not path:
            raise UsageError(f"{flag}: empty path")
    real = {flag: os.path.realpath(path) for flag, path, _ in outputs}
    for (a_flag, a, a_kind), (b_flag, b, _) in itertools.combinations(
        outputs, 2
    ):
        if real[a_flag] == real[b_flag]:
            raise UsageError(f"{a_flag} {a} and {b_flag} {b} are the same path")
        if _replaces(a_kind, real[a_flag], real[b_flag]):
            raise UsageError(
                f"{b_flag} {b} is inside {a_flag} {a}, which is "
                "replaced as a whole"
            )
    for source in filter(None, (args.model, args.calibration)):
        for flag, path, kind in outputs:
            if _replaces(kind, real[flag], os.path.realpath(source)):
                raise UsageError(
                    f"{flag} {path} would overwrite the input {source}"
                )
    for flag, path, kind in outputs:
        problem = export.destination_problem(path, kind)
        if problem:
            raise UsageError(f"{flag} {path}: {problem[1]}")
        target = os.path.abspath(path)
        parent = os.path.dirname(target)
        if not os.access(parent, os.W_OK):
            raise UsageError(
                f"{flag} {path}: directory {parent} is not writable"
            )
        if os.path.exists(target) and not os.access(target, os.W_OK):
            raise UsageError(f"{flag} {path}: not writable")


def _load_calibration(path, model):
    """Checked calibration batches from `.npy` (one input: an array of
    examples) or `.npz` (one such array per input name), 8 examples each."""
    input_names = export.input_names(model)
    where = f"--calibration {path}"
    if not os.path.isfile(path):
        raise UsageError(f"{where}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UsageError(f"{where}: unreadable ({error})") from None
    if not isinstance(data, np.ndarray):  # .npz
        with data:
            arrays = {name: data[name] for name in data.files}
    elif len(input_names) == 1:  # .npy
        arrays = {input_names[0]: data}
    else:
        raise UsageError(
            f"{where}: the model has inputs {input_names}; give an .npz "
            "with one array per input name"
        )
    missing = set(input_names) - set(arrays)
    if missing:
        raise UsageError(
            f"{where}: missing arrays for inputs {sorted(missing)} (has "
            f"{sorted(arrays)})"
        )
    arrays = {name: arrays[name] for name in input_names}
    counts = {name: len(a) if a.ndim else 0 for name, a in arrays.items()}
    if len(set(counts.values())) != 1:
        raise UsageError(
            f"{where}: inputs hold different numbers of examples: {counts}"
        )
    count = counts[input_names[0]]
    if count == 0:
        raise UsageError(f"{where}: no examples")
    try:
        arrays = export.check_calibration_batch(model, arrays, where)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    return [
        {name: arrays[name][i : i + 8] for name in input_names}
        for i in range(0, count, 8)
    ]


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
    longest = export.max_length(model)
    if requested:
        too_long = [n for n in requested if longest and n > longest]
        if too_long:
            raise UsageError(
                f"--seq-len {too_long[0]} exceeds the model's max_length "
                f"{longest}"
            )
        return sorted(set(requested))
    return sorted({1, min(16, longest or 16), longest or 64})


@contextlib.contextmanager
def _held_stderr():
    """Hold what is printed to stderr (file descriptor 2, so TensorFlow's
    C++ converter diagnostics too) and pass it on only on success: a
    failure is reported in one line of our own. A native crash meanwhile
    still shows it (see `_startup.Hold`)."""
    held = _startup.hold()
    succeeded = False
    try:
        yield
        succeeded = True
    finally:
        _decide(held, pass_on=succeeded)


class _Interrupts:
    """Remembers a Ctrl-C, also where TensorFlow swallows the
    KeyboardInterrupt or turns it into another error while it traces."""

    def __enter__(self):
        self.seen = False
        try:
            self.previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread
            self.previous = None
        return self

    def _handler(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def check(self):
        if self.seen:
            raise KeyboardInterrupt

    def ignore(self):
        """Ignore Ctrl-C until the block ends (it is cleaning up)."""
        if self.previous is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc_info):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _one_line(error):
    """An exception as one line: its first line, type name if empty."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[0] + (" (...)" if len(lines) > 1 else "")


def _export(args):
    if args.saved_model is None and args.tflite is None and args.onnx is None:
        raise UsageError(
            "nothing to do: give --saved-model DIR, --tflite FILE and/or "
            "--onnx FILE"
        )
    if args.onnx is not None and not importlib.util.find_spec("tf2onnx"):
        raise UsageError(
            '--onnx needs tf2onnx and onnx: pip install "keras-encoder[onnx]"'
        )
    if args.onnx is not None and keras.backend.backend() != "tensorflow":
        raise UsageError(
            "--onnx converts a TensorFlow graph: run with "
            "KERAS_BACKEND=tensorflow (a .keras file from any backend "
            f"loads there). Received: backend={keras.backend.backend()!r}"
        )
    _check_keras_file(args.model)
    if args.quantize and not args.tflite:
        raise UsageError("--quantize needs --tflite FILE")
    if args.quantize in export.CALIBRATED_MODES and not args.calibration:
        raise UsageError(
            f"--quantize {args.quantize} needs --calibration FILE.npy|.npz "
            "(representative inputs to calibrate activation ranges)"
        )
    if args.quantize == "int16x8":
        try:
            export.check_quantizer_installed()
        except ImportError as error:
            raise UsageError(str(error)) from None
    if any(n < 1 for n in args.seq_len or []):
        raise UsageError("--seq-len values must be positive")
    _check_destinations(args)

    try:
        model = keras.saving.load_model(args.model)
    except Exception as error:
        raise UsageError(
            f"{args.model}: cannot load ({_one_line(error)})"
        ) from None
    try:
        export.model_inputs(model)  # a subclassed model has no signature
    except (TypeError, ValueError) as error:
        raise UsageError(f"{args.model}: {_one_line(error)}") from None
    calibration = (
        _load_calibration(args.calibration, model) if args.calibration else None
    )
    lengths = _lengths(model, args.seq_len)

    staging = export.Staging()
    with _Interrupts() as interrupts:
        try:
            with _held_stderr():
                staged = _stage(model, args, calibration, staging)
                rows = _parity_rows(model, staged, lengths, calibration)
                interrupts.check()  # before anything is renamed into place
                staging.install()
        except (OSError, RuntimeError, TypeError, ValueError) as error:
            interrupts.check()
            raise UsageError(_one_line(error)) from None
        except Exception:
            # A Ctrl-C that TensorFlow turned into another error while it
            # traced (seen: AttributeError "'SymbolicTensor' object has no
            # attribute '_type_spec'") is the Ctrl-C.
            interrupts.check()
            raise
        finally:
            interrupts.ignore()
            staging.close()

    header = (
        f"{'artifact':<32} {'size':>9} {'inputs':>11} "
        f"{'max|diff|':>10} {'cosine':>9}  builtin-only"
    )
    print("\n".join([header, "-" * len(header), *rows]))
    return 0


def _stage(model, args, calibration, staging):
    """Write the artifacts to temporary paths from `staging` (TFLite first:
    it is the one likely to fail); returns [(path as given, temporary
    path)], SavedModel first."""
    outputs = _outputs(args)
    tmp = {kind: staging.add(path, kind) for _, path, kind in outputs}
    if args.tflite:
        flatbuffer = export.tflite_bytes(model, args.quantize, calibration)
        pathlib.Path(tmp["tflite"]).write_bytes(flatbuffer)
    if args.onnx:
        pathlib.Path(tmp["onnx"]).write_bytes(export.onnx_bytes(model))
    if args.saved_model:
        export.write_saved_model(model, tmp["saved_model"])
    return [(path, tmp[kind]) for _, path, kind in outputs]


def _parity_rows(model, staged, lengths, calibration):
    """The parity table's rows, from the staged artifacts."""
    samples = [(f"seq {n}", export.sample_inputs(model, n)) for n in lengths]
    if calibration:
        samples.append(("calibration", calibration[0]))
    rows = []
    for label, tmp in staged:
        for name, inputs in samples:
            result = export.verify(model, tmp, inputs)
            builtin = {None: "-", True: "yes", False: "no"}[result.builtin_only]
            rows.append(
                f"{label:<32} {_human(result.size_bytes):>9} {name:>11} "
                f"{result.max_abs_diff:>10.2e} {result.cosine:>9.6f}  "
                f"{builtin}"
            )
    return rows


def _check_tflite_file(path):
    """Refuse what is not a TFLite flatbuffer (an ONNX model, a .keras
    file) by its file identifier, before parsing it."""
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file")
    with open(path, "rb") as file:
        head = file.read(8)
    if head[4:8] == TFLITE_IDENTIFIER:
        return
    if not head:
        why = "the file is empty"
    elif len(head) < 8:
        why = f"{len(head)} bytes, too short for one"
    elif zipfile.is_zipfile(path):
        why = "a zip archive, e.g. a .keras model"
    else:
        why = (
            f"no {TFLITE_IDENTIFIER.decode()} file identifier at byte 4; "
            f"the file starts with {head!r}"
        )
    raise UsageError(f"{path}: not a TFLite flatbuffer ({why})")


def _inspect(args):
    path = args.tflite
    _check_tflite_file(path)
    try:
        described = export.describe_tflite(path)
    except Exception as error:
        raise UsageError(
            f"{path}: a damaged TFLite flatbuffer ({_one_line(error)})"
        ) from None
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
        description="Export Keras encoder models to SavedModel, TFLite "
        "and ONNX.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export_command = commands.add_parser(
        "export", help="export a .keras model and print a parity table"
    )
    export_command.add_argument("model", metavar="MODEL.keras")
    export_command.add_argument("--saved-model", metavar="DIR")
    export_command.add_argument("--tflite", metavar="FILE")
    export_command.add_argument(
        "--onnx", metavar="FILE", help="also write an ONNX model (float32)"
    )
    export_command.add_argument(
        "--quantize",
        choices=[mode for mode in export.QUANTIZE_MODES if mode],
        default=None,
    )
    export_command.add_argument("--calibration", metavar="FILE.npy|.npz")
    export_command.add_argument(
        "--seq-len",
        type=int,
        nargs="+",
        metavar="N",
        help="sequence lengths to check parity at (default: 1, 16 and the "
        "model's max_length, or 64 without one)",
    )
    export_command.set_defaults(run=_export)
    inspect_command = commands.add_parser(
        "inspect", help="show a .tflite model's signature and ops"
    )
    inspect_command.add_argument("tflite", metavar="FILE.tflite")
    inspect_command.set_defaults(run=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command with `argv` (default: `sys.argv[1:]`); returns the
    exit status: 0, 2 for bad input, 130 when interrupted, 141 when stdout
    is a pipe that was closed. argparse's --help and usage errors raise
    SystemExit, as argparse does."""
    import_log = None
    try:
        # What TensorFlow printed while it was imported (see _startup):
        # passed on unless the command fails with its own one line.
        import_log = _startup.release()
        try:
            args = _parser().parse_args(argv)
            code = args.run(args)
        finally:
            if sys.stdout is not None:
                sys.stdout.flush()  # a closed pipe shows here, not at exit
    except UsageError as error:
        _decide(import_log, pass_on=False)
        _error(f"keras-encoder: error: {error}")
        return USAGE_ERROR
    except KeyboardInterrupt:
        # Cleaned up already; a second Ctrl-C must not turn the exit into
        # a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _decide(import_log, pass_on=False)
        _error("keras-encoder: interrupted")
        return INTERRUPTED
    except BrokenPipeError:
        _decide(import_log, pass_on=False)
        _discard_stdout()
        return BROKEN_PIPE
    except SystemExit as exit:  # argparse: --help, or a usage error
        _decide(import_log, pass_on=exit.code in (0, None))
        raise
    except BaseException:
        _decide(import_log, pass_on=True)
        raise
    _decide(import_log, pass_on=True)
    return code


def _decide(held, pass_on):
    """Pass on or drop held stderr text (a `_startup.Hold`, or None)."""
    if held is None:
        return
    if pass_on:
        held.pass_on()
    else:
        held.drop()


def _error(line):
    """One line to stderr, if there is a stderr to write to."""
    if sys.stderr is not None:
        with contextlib.suppress(OSError):
            print(line, file=sys.stderr, flush=True)


def _discard_stdout():
    """stdout is a pipe whose reader has gone: point it at /dev/null, so
    that Python's flush at exit does not fail again (the Python docs'
    recipe for SIGPIPE)."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, sys.stdout.fileno())
        finally:
            os.close(null)


if __name__ == "__main__":
    sys.exit(main())
