"""File paths: inputs must be regular files; outputs are written atomically (a
temporary file beside the target, fsync, rename), so a failure or Ctrl-C at any
point leaves no partial file behind.

On Linux the temporary file is unnamed (O_TMPFILE) until it is complete, so even a
process killed outright (SIGKILL, the OOM killer) leaves nothing: the kernel frees
an unnamed file when its last descriptor closes. Elsewhere, or on file systems
without O_TMPFILE, it is a named `.qllama-*.part` file, removed on any error.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile

from .errors import UsageError


def require_regular_file(path: str, error=UsageError) -> None:
    """Refuse a missing path, a directory, a FIFO or a device before opening it
    (opening a FIFO blocks; a device has no size to validate)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise error(f"{path}: not a regular file")


def check_output_path(path: str, force: bool = False, inputs: tuple = ()) -> None:
    """Refuse an output that would overwrite an input or an existing file; --force
    replaces regular files only (never a device, FIFO or directory)."""
    for src in inputs:
        if os.path.exists(path) and os.path.exists(src) and os.path.samefile(path, src):
            raise UsageError(f"{path}: output is the same file as the input")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory")
    if os.path.lexists(path) and not force:
        raise UsageError(f"{path}: already exists (use --force to overwrite)")
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise UsageError(f"{path}: not a regular file; refusing to replace it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{path}: output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{path}: output directory {parent} is not writable")


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _open_unnamed(parent: str) -> int | None:
    """An unnamed file in `parent` (mode 0666 minus umask, as open() gives), or None
    where O_TMPFILE or /proc/self/fd (needed to name it at the end) is missing."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(parent, flag | os.O_RDWR, 0o666)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None  # this file system or kernel has no O_TMPFILE
        raise UsageError(f"{parent}: cannot create output: {e.strerror}") from None


def _link_fd(fd: int, path: str) -> None:
    """Give the unnamed file `fd` the name `path`: linkat(AT_SYMLINK_FOLLOW) of its
    /proc/self/fd entry. A dir fd makes os.link call linkat (link() would try to
    link the /proc symlink itself)."""
    dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(f"/proc/self/fd/{fd}", os.path.basename(path), dst_dir_fd=dfd,
                follow_symlinks=True)
    finally:
        os.close(dfd)


@contextlib.contextmanager
def atomic_output(path: str, force: bool = False, inputs: tuple = ()):
    """Yield a binary file object; on success it replaces `path`, else it vanishes."""
    check_output_path(path, force, inputs)
    parent = os.path.dirname(os.path.abspath(path))
    fd = _open_unnamed(parent)
    tmp = None
    try:
        if fd is None:
            fd, tmp = tempfile.mkstemp(prefix=".qllama-", suffix=".part", dir=parent)
            # mkstemp makes the file 0600; give it the mode open() would (0666 minus umask)
            os.fchmod(fd, 0o666 & ~_umask())
    except OSError as e:
        raise UsageError(f"{path}: cannot create output: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            if tmp is None:  # name the complete file, then move it over `path`
                tmp = os.path.join(parent, f".qllama-{os.urandom(6).hex()}.part")
                _link_fd(f.fileno(), tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
