"""Holds what TensorFlow prints while it is imported, when the process is
the `keras-encoder` command.

TensorFlow's C++ runtime writes a few lines to file descriptor 2 while it
is imported (absl's "All log messages before absl::InitializeLog()", the
oneDNN and CPU-feature notices), whatever `TF_CPP_MIN_LOG_LEVEL` says.
The package imports Keras, and so TensorFlow, before the command's own
code runs, which would put those lines above the command's one-line
error. This module is imported first by `keras_encoder/__init__.py`: in
the command's process it points file descriptor 2 at a temporary file
until `cli.main` takes what was held and decides (dropped when the
command fails with its one line, passed on otherwise). Anywhere else it
does nothing.

If `cli.main` never runs (the import itself fails), the held text and
the traceback are written to the real stderr at exit, in order.
"""

import atexit
import os
import sys
import tempfile

COMMAND = "keras-encoder"

# (saved file descriptor 2, temporary file) while the import log is held.
_held = None


def _is_command():
    argv = getattr(sys, "argv", None) or [""]
    name = os.path.splitext(os.path.basename(argv[0]))[0]
    if name == COMMAND:
        return True
    # `python -m keras_encoder`: sys.argv[0] is "-m" while the package is
    # imported; the original command line says which module.
    orig = getattr(sys, "orig_argv", [])
    return any(
        orig[i] == "-m" and orig[i + 1] == "keras_encoder"
        for i in range(len(orig) - 1)
    )


def _hold():
    global _held
    if "tensorflow" in sys.modules or not _is_command():
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no stderr to hold
        return
    held = tempfile.TemporaryFile()
    os.dup2(held.fileno(), 2)
    _held = (saved, held)
    atexit.register(_release_at_exit)


def take():
    """Stop holding; return what was printed meanwhile (b"" if nothing
    was held)."""
    global _held
    if _held is None:
        return b""
    saved, held = _held
    _held = None
    try:
        sys.stderr.flush()
    except ValueError:
        pass
    os.dup2(saved, 2)
    os.close(saved)
    held.seek(0)
    text = held.read()
    held.close()
    return text


def _release_at_exit():
    text = take()
    if text:
        os.write(2, text)


_hold()
