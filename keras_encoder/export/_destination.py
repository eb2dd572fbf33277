"""Where an artifact may be written, and what an artifact is.

Destinations are checked before any work. An existing artifact of the same
kind is replaced (a SavedModel directory: `saved_model.pb` and nothing else
than what a SavedModel holds; a `.tflite` file: a TFLite flatbuffer; an
`.onnx` file: an ONNX model), as is an empty directory or file; anything
else is refused with a `FileExistsError`, so an export never deletes what
it did not write.
"""

import os
import re

_KINDS = {
    "saved_model": "a SavedModel",
    "tflite": "a TFLite model",
    "onnx": "an ONNX model",
}
_FILE_KINDS = ("tflite", "onnx")

# What `model.export(..., format="tf_saved_model")` and `tf.saved_model.save`
# write at the top of a SavedModel directory, and in its variables/.
_SAVED_MODEL_ENTRIES = {
    "saved_model.pb",
    "saved_model.pbtxt",
    "fingerprint.pb",
    "keras_metadata.pb",
    "variables",
    "assets",
    "assets.extra",
}
_VARIABLES_FILE = re.compile(r"variables\.(index|data-\d+-of-\d+)$")


def _is_saved_model(path):
    """Whether directory `path` holds a SavedModel and nothing foreign."""
    names = set(os.listdir(path))
    if not names & {"saved_model.pb", "saved_model.pbtxt"}:
        return False
    if names - _SAVED_MODEL_ENTRIES:
        return False
    variables = os.path.join(path, "variables")
    if "variables" in names:
        if not os.path.isdir(variables):
            return False
        if not all(_VARIABLES_FILE.match(n) for n in os.listdir(variables)):
            return False
    return True


def _is_tflite(path):
    """Whether file `path` is a TFLite flatbuffer (file identifier TFL3)."""
    with open(path, "rb") as f:
        head = f.read(8)
    return len(head) == 8 and head[4:] == b"TFL3"


def _is_onnx(path):
    """Whether file `path` parses as an ONNX model with a graph."""
    try:
        import onnx
    except ImportError:
        return False
    try:
        model = onnx.load_model(path, load_external_data=False)
    except Exception:  # any parse failure: not ONNX
        return False
    return bool(model.ir_version) and len(model.graph.node) > 0


_RECOGNISERS = {
    "saved_model": _is_saved_model,
    "tflite": _is_tflite,
    "onnx": _is_onnx,
}


def is_artifact(path: str | os.PathLike, kind: str) -> bool:
    """Whether `path` holds an artifact of `kind`.

    Args:
        path: an existing directory (for `"saved_model"`, which must hold
            nothing foreign) or file (for `"tflite"` and `"onnx"`).
        kind: `"saved_model"`, `"tflite"` or `"onnx"`.
    """
    return _RECOGNISERS[kind](os.fspath(path))


def _listing(path, limit=3):
    names = sorted(os.listdir(path))
    shown = ", ".join(names[:limit])
    return shown + (
        f", ... ({len(names)} entries)" if len(names) > limit else ""
    )


def destination_problem(
    path: str | os.PathLike, kind: str
) -> tuple[type[Exception], str] | None:
    """Why an artifact of `kind` cannot be written at `path`.

    Args:
        path: where the artifact goes.
        kind: `"saved_model"`, `"tflite"` or `"onnx"`.

    Returns:
        None when it can (`path` is absent, empty, or an artifact of the
        same kind, which is then replaced); else the error class to raise
        and the reason, e.g. `(FileExistsError, "exists and is not a TFLite
        model; ...")`, to be prefixed with the path.
    """
    try:
        return _inspect_destination(os.fspath(path), kind)
    except OSError as error:
        return type(error), f"cannot be inspected ({error.strerror})"


def _missing_directory(parent):
    """Why directory `parent` is not there: a file in the way (the nearest
    existing ancestor is not a directory), or it does not exist."""
    ancestor = parent
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        return NotADirectoryError, f"{ancestor!r} is not a directory"
    return FileNotFoundError, f"directory {parent!r} does not exist"


def _inspect_destination(path, kind):
    what = _KINDS[kind]
    target = os.path.abspath(path)
    parent = os.path.dirname(target)
    if kind in _FILE_KINDS and path.endswith((os.sep, "/")):
        return ValueError, f"{what} is a file, not a directory path"
    if target == parent:
        return ValueError, "the root directory cannot be replaced"
    if not os.path.isdir(parent):
        return _missing_directory(parent)
    if os.path.islink(target):
        return FileExistsError, (
            "is a symbolic link; refusing to replace it (give the path it "
            "points to, or another path)"
        )
    if not os.path.exists(target):
        return None
    cwd = os.path.realpath(os.getcwd())
    if kind == "saved_model" and os.path.isdir(target):
        if os.path.commonpath([cwd, os.path.realpath(target)]) == (
            os.path.realpath(target)
        ):
            return FileExistsError, "contains the current directory"
        if not os.listdir(target) or _is_saved_model(target):
            return None
        return FileExistsError, (
            f"exists and is not a SavedModel (it holds {_listing(target)}); "
            "refusing to replace it: remove it or choose another path"
        )
    if kind in _FILE_KINDS and os.path.isfile(target):
        if os.path.getsize(target) == 0 or _RECOGNISERS[kind](target):
            return None
        return FileExistsError, (
            f"exists and is not {what}; refusing to replace it: "
            "remove it or choose another path"
        )
    found = "a directory" if os.path.isdir(target) else "a file"
    return FileExistsError, (
        f"is {found}, where {what} goes; refusing to replace it"
    )


def check_destination(path: str | os.PathLike, kind: str) -> str:
    """Check that an artifact of `kind` may be written at `path`.

    An absent path, an empty file or directory, or an artifact of the same
    kind may be (and is then replaced); anything else may not.

    Args:
        path: where the artifact goes.
        kind: `"saved_model"` (a directory), `"tflite"` or `"onnx"` (a
            file).

    Returns:
        The absolute path.

    Raises:
        FileExistsError: something else is there.
        FileNotFoundError: the parent directory does not exist.
        NotADirectoryError: the path goes through a file
            (`notes.txt/model.tflite`).
        ValueError: `path` cannot name such an artifact (a `.tflite` path
            ending in a separator).
    """
    if kind not in _KINDS:
        raise ValueError(
            "Received an invalid value for argument `kind`: expected one of "
            f"{sorted(_KINDS)}. Received: kind={kind!r}"
        )
    problem = destination_problem(path, kind)
    if problem:
        error, reason = problem
        raise error(
            f"Cannot write {_KINDS[kind]} to {os.fspath(path)!r}: {reason}"
        )
    return os.path.abspath(path)
