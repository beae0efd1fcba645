"""How the program writes files: each one complete or absent, readable as any file
the user makes (their umask), and through a temporary name no other process uses.

A file is written under a hidden name unique to the process in its own folder,
then renamed onto its final name (`os.replace`, atomic on one file system): a
reader, a server or a killed process sees the old file or the new one, never half
of one, and two processes writing the same file never mix their temporary files.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterator


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it (setting
    it, even for an instant, would apply to files other threads create)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def file_mode() -> int:
    """What `open(path, "w")` gives a new file: 0644 under the usual umask 022."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """What `os.mkdir` gives a new folder: 0755 under the usual umask 022."""
    return 0o777 & ~umask()


def make_readable(tree: str) -> None:
    """Gives `tree` and everything in it the modes of files and folders made
    normally (`tempfile.mkdtemp` makes 0700, `mkstemp` 0600), so that a server
    running as another user reads them."""
    files, dirs = file_mode(), dir_mode()
    os.chmod(tree, dirs)
    for root, folders, names in os.walk(tree):
        for name in folders:
            os.chmod(os.path.join(root, name), dirs)
        for name in names:
            os.chmod(os.path.join(root, name), files)


def temporary_name(path: str) -> str:
    """A hidden name beside `path`, unique to this process and call, ending in
    `path`'s suffixes (`.keras`, `.weights.h5`, `.png`: writers pick the format
    from them)."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, dot, suffix = name.partition(".")
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    return os.path.join(folder, f".{stem}.tmp-{tag}{dot}{suffix}")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path to write `path` through; renamed onto `path` when
    the block ends, removed when it raises. The folder is made if missing."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs) -> Iterator:
    """`open(path, mode)` through `atomic_path`."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_json(path: str, value) -> None:
    with atomic_open(path) as f:
        json.dump(value, f, indent=2, default=str)


def writable_folder(folder: str, flag: str) -> None:
    """Raises `ValueError` naming `flag` when files cannot be written in `folder`
    (or, where it does not exist yet, in the folder it would be made in); checked
    before any work that would be lost, and leaving nothing behind."""
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(
            f"{flag}={folder}: {probe} is a file, not a folder; choose another path"
        )
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test-", dir=probe)
        os.close(fd)
        os.remove(tmp)
    except OSError as error:
        raise ValueError(
            f"{flag}={folder}: cannot write in {probe} ({error.strerror or error}); "
            "choose a folder you can write to"
        ) from None


def writable_file(path: str, flag: str) -> None:
    """`writable_folder` for the folder of the file `path`, which must not be a
    folder itself."""
    if os.path.isdir(path):
        raise ValueError(f"{flag}={path}: a folder, expected a file path")
    writable_folder(os.path.dirname(os.path.abspath(path)), flag)
