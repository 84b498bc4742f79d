# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Careful file I/O: atomic writes, no symlinks followed where we read, replace or delete."""

from __future__ import annotations

import errno
import os
import stat
import tempfile

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError, InputError

MAX_FILE = 32 * 1024 * 1024


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: str, mode: int = 0o700) -> bool:
    """Create a private directory (and parents); refuse a symlink or non-directory. True if created."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            ensure_dir(parent, mode)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            # Another run created it in the meantime: check what it is, below.
            return ensure_dir(path, mode)
        os.chmod(path, mode)
        fsync_dir(parent)
        return True
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path} exists and is not a directory (a symlink or a file); refusing to use it")
    return False


def write_atomic(path: str, data: bytes, mode: int = 0o600, exclusive: bool = False) -> None:
    """Temp file in the same directory, fsync, rename over the target, fsync the directory.

    With `exclusive`, the target must not exist (FileExistsError otherwise): the
    temp file is hard-linked into place, which never replaces a file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.islink(path):
        raise InputError(f"{path} is a symlink; refusing to replace it")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


def read_regular(path: str, what: str, max_size: int = MAX_FILE) -> bytes:
    """Read a regular file without following a symlink at the last component."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FormatError(f"{what} ({path}) is a symlink; refusing to follow it") from exc
        if exc.errno == errno.ENOENT:
            raise FileNotFoundError(errno.ENOENT, f"{what} not found", path) from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(f"{what} ({path}) is not a regular file")
        if st.st_size > max_size:
            raise FormatError(f"{what} ({path}) is {st.st_size} bytes, more than the {max_size} allowed")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def remove_file(path: str) -> bool:
    """Unlink a file (never through a symlink's target) and fsync its directory. True if removed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path} is a directory; refusing to remove it as a file")
    os.unlink(path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return True
