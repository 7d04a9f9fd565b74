"""A state file's lock, its directory, and the files a killed writer left: the parts of
``journal.py`` (and the disk queue's, the gateway's shared log's) that open no record file.

A lock file ``P.lock`` is held with ``flock`` by the one process that owns ``P`` (the kernel
drops it when that process dies, so a killed process never blocks its restart); it is never
opened through a symlink, and one with a second (hard) name is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import stat
from typing import Final

from .errors import PersistenceError, StateError, StateLockedError, UsageError
from .recovery import _NOFOLLOW, JOURNAL_SUFFIX, _refuse_link, refuse_foreign

__all__ = ["acquire_lock", "forks", "release_lock", "require_directory", "unlinked"]

_forks = 0  # fork()s between the process that imported this module and this one
_held: set[int] = set()  # the lock fds this process holds (``acquire_lock``)


def _after_fork() -> None:
    """In a fork()'s child: its copies of the parent's lock fds let go of the flock (it is
    the open file's: a child that outlives a killed parent would hold its restart off), each
    number kept, pointing at /dev/null (the parent's objects here may close it)."""
    global _forks
    _forks += 1
    if not _held:
        return
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:  # pragma: no cover - no /dev/null
        return
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.dup2(null, fd, inheritable=False)
    _held.clear()
    os.close(null)


os.register_at_fork(after_in_child=_after_fork)


def forks() -> int:
    """fork()s since this module was imported: an object that recorded another count was made
    in a parent process, whose state file lock, files and socket it holds (never this one's
    to write, close or unlink)."""
    return _forks

log = logging.getLogger("mqttsession.journal")  # the state file's logger, as ever

_MODE: Final = 0o600
_PROC_FD: Final = "/proc/self/fd/"


def unlinked(fd: int) -> bool:
    """Whether the open file ``fd`` lost its last name (deleted, or another file renamed over
    it). Read from ``/proc`` where there is one, not with ``fstat``: a stat asks for the
    file's times, and since Linux 6.13 (multigrain timestamps) the next write then stamps
    them finely, which makes the fdatasync after it commit the inode too (30-40 µs more,
    a third of one on this project's machine: ``bench/README.md``, session 16)."""
    try:
        if not os.readlink(f"{_PROC_FD}{fd}").endswith(" (deleted)"):
            return False
    except OSError:
        pass
    return os.fstat(fd).st_nlink == 0  # (also a name that itself ends so)


def _own_file(fd: int, path: str) -> None:
    """Check a state file opened for writing: one regular file with one name (a hard link
    would let a write reach another file: ``StateError``), ours (``refuse_foreign``); a wider
    mode is narrowed to 0600."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        raise StateError(f"{path} is not a regular file with one link (it has {st.st_nlink});"
                         " refused, nothing written")
    refuse_foreign(st, path)
    if st.st_mode & 0o077:
        try:
            os.fchmod(fd, _MODE)
        except OSError:  # pragma: no cover - not our file: it is only ever narrowed
            pass


_STALE_TEMP: Final = re.compile(r"\.tmp-(?:[0-9a-f]{16}|\d+-\d+)\Z")  # this and format 1's names


def _remove_stale_temps(path: str) -> None:
    """Remove the temporary files a killed owner of ``path`` left (its lock is ours now, so no
    one else writes them): ``path.tmp-*`` and ``path.journal.tmp-*`` of our own naming only."""
    folder, base = os.path.split(os.path.abspath(path))
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        for owner in (base, base + JOURNAL_SUFFIX):
            if name.startswith(owner) and _STALE_TEMP.fullmatch(name, len(owner)):
                try:
                    os.unlink(os.path.join(folder, name))  # a symlink itself, never its target
                    log.info("removed %s, left by a process killed mid-write", name)
                except OSError:
                    pass


def require_directory(path: str) -> None:
    """``UsageError`` naming the directory when a state file's directory does not exist (or
    is not a directory): a setting to fix, not a disk fault."""
    where = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(where):
        return
    what = ("is not a directory" if os.path.exists(where) else
            f"does not exist (create it first, e.g. os.makedirs({where!r}, exist_ok=True))")
    raise UsageError(f"SessionStateFile {path}: the directory {where} {what}; nothing was"
                     " written") from None


def acquire_lock(lock_path: str, what: str) -> int:
    """The fd of lock file ``lock_path``, locked (``flock``) with this process's pid in it;
    ``StateLockedError`` naming ``what`` while another process holds it. A lock file found
    through a symlink is ``StateError``; one unlinked by its previous owner while we waited
    is left for the new one."""
    for _ in range(5):
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, _MODE)
        except OSError as exc:
            _refuse_link(lock_path, exc)
            raise PersistenceError(exc.errno, f"cannot open {lock_path}: {exc.strerror}") from exc
        try:
            _own_file(fd, lock_path)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            finally:
                os.close(fd)
            who = (f"another session or client in this process (pid {owner}; close it first)"
                   if owner == str(os.getpid()) else f"another process (pid {owner or '?'})")
            raise StateLockedError(f"{what} is in use by {who}") from None
        except BaseException:
            os.close(fd)
            raise
        try:  # (an interrupt from here on closes the locked fd: never a lock left held)
            try:
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                try:  # the pid: a hint for the error above, not the lock (the flock is)
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                except OSError as exc:  # a full disk: the lock holds all the same
                    log.warning("%s: its pid not written to %s: %s", what, lock_path, exc)
                _held.add(fd)
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # unlinked by its previous owner while we waited: take the new one
    raise StateLockedError(f"cannot lock {lock_path}")  # pragma: no cover


def release_lock(fd: int) -> None:
    """Close lock fd ``fd`` (``acquire_lock``'s): the flock released."""
    _held.discard(fd)
    os.close(fd)
