"""Artifacts written beside their destinations, then renamed into place.

An artifact is written under a temporary name beside its target (same
directory, so the rename is atomic for a file) and renamed into place
only once it is complete, so a failure (or Ctrl-C) never leaves a
half-written artifact or a temporary file behind. An installed artifact
gets the permission bits of a plain write under the umask (files
0666 & ~umask, directories 0777 & ~umask), or those of the artifact it
replaces, not the private ones of its temporary. `Staging` holds several
artifacts and installs them together, after the caller has checked them;
`staged` is the one-artifact case.
"""

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator

from keras_encoder.export._destination import check_destination


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _umask():
    """The process's umask (read by setting it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode(target, kind):
    """The permission bits for an artifact installed at `target`: those of
    the artifact it replaces, as editors keep them; else those of a plain
    write (`open`, `mkdir`) under the umask. (`mkstemp` and `mkdtemp`
    create the staged artifact private, 0600 or 0700.)"""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        plain = 0o777 if kind == "saved_model" else 0o666
        return plain & ~_umask()


def _plain_modes_inside(root):
    """Give everything under the directory `root` the modes of a plain
    write under the umask: TensorFlow makes a SavedModel's `assets` and
    `variables` 0755 whatever the umask (0775 under umask 002)."""
    mask = _umask()
    for parent, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(parent, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(parent, name), 0o666 & ~mask)


def _install(staged, path, kind):
    """Move the staged artifact `staged` to `path`, replacing what
    `check_destination` allows there (checked again now), with the
    permission bits of `_mode`."""
    target = check_destination(path, kind)
    if kind == "saved_model":
        _plain_modes_inside(staged)
    os.chmod(staged, _mode(target, kind))
    if kind != "saved_model" or not os.path.exists(target):
        os.replace(staged, target)
        return
    # A directory cannot be replaced in one rename: move the old one aside,
    # put the new one in place (or the old one back), then delete the old.
    parent, name = os.path.split(target)
    aside = tempfile.mkdtemp(prefix=f".{name}.old.", dir=parent)
    try:
        old = os.path.join(aside, name)
        os.rename(target, old)
        try:
            os.rename(staged, target)
        except BaseException:
            os.rename(old, target)
            raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


class Staging:
    """Artifacts staged beside their destinations, installed together.

    `add` checks a destination (see `check_destination`) and returns a
    temporary path beside it for the artifact: an empty directory for a
    SavedModel, an empty file otherwise. `install` renames every staged
    artifact into place, in the order added, checking each destination
    again. `close`, or leaving the `with` block, removes what was not
    installed: after a failure or Ctrl-C, the destinations are as they were
    and no temporary file is left. So: `add` each artifact, write it to the
    path returned, check it there (e.g. with `verify`), then `install`, all
    inside `with Staging() as staging:`.
    """

    def __init__(self):
        self._staged = []  # (temporary path, target, kind)

    def add(self, path: str | os.PathLike, kind: str) -> str:
        """Stage an artifact of `kind` for `path`; returns the temporary
        path to write it to.

        Raises:
            FileExistsError, FileNotFoundError, ValueError: as
                `check_destination`.
        """
        target = check_destination(path, kind)
        parent, name = os.path.split(target)
        names = {"prefix": f".{name}.", "suffix": ".tmp", "dir": parent}
        if kind == "saved_model":
            temporary = tempfile.mkdtemp(**names)
        else:
            fd, temporary = tempfile.mkstemp(**names)
            os.close(fd)
        self._staged.append((temporary, target, kind))
        return temporary

    def install(self) -> None:
        """Rename the staged artifacts into place, in the order added."""
        for temporary, target, kind in self._staged:
            _install(temporary, target, kind)

    def close(self) -> None:
        """Remove the staged artifacts not installed."""
        for temporary, _, _ in self._staged:
            _remove(temporary)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


@contextlib.contextmanager
def staged(path: str | os.PathLike, kind: str) -> Iterator[str]:
    """A temporary path beside `path` to write an artifact of `kind` to:
    renamed into place when the block succeeds, removed when it fails.

    The destination is checked first (see `check_destination`).
    """
    with Staging() as staging:
        temporary = staging.add(path, kind)
        yield temporary
        staging.install()
