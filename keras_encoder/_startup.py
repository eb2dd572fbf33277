"""Holds what TensorFlow prints while it is imported, when the process is
the `keras-encoder` command.

TensorFlow's C++ runtime writes a few lines to file descriptor 2 while it
is imported (absl's "All log messages before absl::InitializeLog()", the
oneDNN and CPU-feature notices), whatever `TF_CPP_MIN_LOG_LEVEL` says.
The package imports Keras, and so TensorFlow, before the command's own
code runs, which would put those lines above the command's one-line
error. This module is imported first by `keras_encoder/__init__.py`: in
the command's process it points file descriptor 2 at a temporary file
until `cli.main` calls `release` and decides (dropped when the command
fails with its one line, passed on otherwise). Anywhere else it does
nothing: the command is recognised by its entry point (the console script
installed with the package, or `python -m keras_encoder`), never by a
script's file name.

Held text is never lost: a watcher process (see `Hold`) writes it to the
real stderr if the process dies before deciding (a native abort while
TensorFlow loads, a kill, `os._exit`). If `cli.main` never runs (the
import itself fails), the held text and the traceback are written at
exit, in order. Ctrl-C while the package is imported prints the command's
one line and exits with status 130, as it does later.
"""

import atexit
import contextlib
import inspect
import os
import signal
import subprocess
import sys
import tempfile
import threading

COMMAND = "keras-encoder"
# The distribution whose console script is the command.
DISTRIBUTION = "keras-encoder"
# The modules that are the command under `python -m`.
MODULES = ("keras_encoder", "keras_encoder.cli")
INTERRUPTED = 130

# The watcher of a `Hold`, run as `python -I -S -c _WATCHER FD` with the
# held file open as FD, its orders on stdin and the real stderr as its
# file descriptor 2: b"d" drops the held text; end of file (the holder
# closed the pipe, or died) writes it out.
_WATCHER = """\
import os, sys
held = int(sys.argv[1])
if os.read(0, 1) != b"d":
    offset = 0
    while chunk := os.pread(held, 1 << 16, offset):
        offset += len(chunk)
        try:
            while chunk:
                chunk = chunk[os.write(2, chunk) :]
        except OSError:
            break
"""


@contextlib.contextmanager
def _interrupts_deferred():
    """Ctrl-C waits until the block ends: a hold changes state in steps,
    and a KeyboardInterrupt between two of them would lose track of the
    text. (Blocking the signal would not do: another thread takes it.)"""
    previous = signal.getsignal(signal.SIGINT)
    if previous is None or threading.current_thread() is not (
        threading.main_thread()
    ):  # Ctrl-C reaches the main thread only; a C handler is left alone
        yield
        return
    seen = []
    signal.signal(signal.SIGINT, lambda signum, frame: seen.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if seen and callable(previous):
            previous(signal.SIGINT, seen[0])
        elif seen and previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)


def _flush_stderr():
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stderr.flush()  # None when there is no stderr


class Hold:
    """File descriptor 2 pointed at a temporary file, so that whatever is
    printed there (by C++ code too) is held: `stop` points it back at the
    real stderr, then `pass_on` writes the held text there or `drop`
    discards it. Made by `hold()`.

    Until it is decided, a watcher process (its own session, so Ctrl-C and
    a kill of the process group miss it) keeps the text safe: when this
    process dies first, by a native abort, a kill or `os._exit`, the
    watcher writes the text to the real stderr, after the death.
    """

    def __init__(self, held, saved, watcher, lifeline):
        self._held = held  # the temporary file
        self._saved = saved  # the real stderr, while held
        self._watcher = watcher
        self._lifeline = lifeline  # the watcher's stdin

    def stop(self):
        """Point file descriptor 2 back at the real stderr; the text stays
        held until `pass_on` or `drop`."""
        with _interrupts_deferred():
            if self._saved is not None:
                _flush_stderr()
                os.dup2(self._saved, 2)
                os.close(self._saved)
                self._saved = None

    def pass_on(self):
        """Stop holding and write the held text to stderr."""
        self._decide(b"")

    def drop(self):
        """Stop holding and discard the held text."""
        self._decide(b"d")

    def _decide(self, order):
        with _interrupts_deferred():
            if self._lifeline is None:
                return
            self.stop()
            with contextlib.suppress(OSError):  # the watcher is gone
                os.write(self._lifeline, order)
            os.close(self._lifeline)
            self._lifeline = None
            self._watcher.wait()  # it has written the text, if told to
            self._held.close()


def hold():
    """Start holding file descriptor 2 (see `Hold`); returns the `Hold`,
    or None where nothing can be held (no stderr, no temporary file, no
    POSIX file descriptors, no interpreter to run the watcher): then the
    text shows as it is printed."""
    if os.name != "posix" or not sys.executable:
        return None
    with _interrupts_deferred():
        _flush_stderr()
        try:
            return _start_holding()
        except OSError:
            return None


def _start_holding():
    with contextlib.ExitStack() as undo:
        saved = os.dup(2)
        undo.callback(os.close, saved)
        held = undo.enter_context(tempfile.TemporaryFile())
        lifeline, orders = os.pipe()
        undo.callback(os.close, orders)
        try:
            watcher = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHER]
                + [str(held.fileno())],
                stdin=lifeline,
                stdout=subprocess.DEVNULL,
                pass_fds=(held.fileno(),),
                start_new_session=True,
            )
        finally:
            os.close(lifeline)
        os.dup2(held.fileno(), 2)
        undo.pop_all()
        return Hold(held, saved, watcher, orders)


def _module_run_as_main():
    """The module that `python -m` is starting, while it is imported."""
    frame = inspect.currentframe()
    while frame is not None:
        if (
            frame.f_code.co_name == "_run_module_as_main"
            and frame.f_globals.get("__name__") == "runpy"
        ):
            return frame.f_locals.get("mod_name")
        frame = frame.f_back
    return None


def _is_installed_script(path):
    """Whether `path` is the console script installed with the package
    (listed in the distribution's RECORD), not a file of the same name."""
    if not path or not os.path.basename(path).startswith(COMMAND):
        return False  # spares the metadata lookup for other scripts
    from importlib import metadata

    try:
        files = metadata.distribution(DISTRIBUTION).files or ()
    except metadata.PackageNotFoundError:
        return False
    real = os.path.realpath(path)
    return any(
        os.path.realpath(file.locate()) == real
        for file in files
        if file.name.startswith(COMMAND)
    )


def _is_command():
    main = sys.modules.get("__main__")
    return _module_run_as_main() in MODULES or _is_installed_script(
        getattr(main, "__file__", None)
    )


def _reopen_closed_standard_streams():
    """`keras-encoder 2>&-`: a closed stdin, stdout or stderr becomes
    /dev/null (what is written there is dropped), so that the next file
    opened does not take its descriptor and receive the output. Returns
    whether stderr was closed."""
    reopened = []
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))
        reopened.append(fd)
    return 2 in reopened


# The import log's Hold, in the command's process until `release`, and the
# SIGINT handler that `_interrupted` replaced meanwhile.
_import_log = None
_previous_sigint = None


def _interrupted(signum, frame):
    """Ctrl-C while the package is imported: the command's one line and
    exit status, not a traceback from inside TensorFlow's import."""
    held = release()
    if held is not None:
        held.drop()
    with contextlib.suppress(OSError):
        os.write(2, b"keras-encoder: interrupted\n")
    os._exit(INTERRUPTED)


def release():
    """Stop holding what was printed while the package was imported and
    return its `Hold`, for the caller to `pass_on` or `drop`; None if
    nothing is held (not the command, or released already)."""
    global _import_log
    held, _import_log = _import_log, None
    if held is None:
        return None
    held.stop()
    if signal.getsignal(signal.SIGINT) is _interrupted:
        signal.signal(signal.SIGINT, _previous_sigint)
    return held


def _release_at_exit():
    held = release()
    if held is not None:
        held.pass_on()


def _start():
    global _import_log, _previous_sigint
    if not _is_command() or _reopen_closed_standard_streams():
        return
    if "tensorflow" in sys.modules:
        return
    # Ctrl-C as the command's own line; not where it is ignored (a
    # background job) or handled by the embedding program.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        with contextlib.suppress(ValueError):  # not the main thread
            _previous_sigint = signal.signal(signal.SIGINT, _interrupted)
    _import_log = hold()
    if _import_log is None:
        if signal.getsignal(signal.SIGINT) is _interrupted:
            signal.signal(signal.SIGINT, _previous_sigint)
        return
    atexit.register(_release_at_exit)


_start()
