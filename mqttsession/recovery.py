"""A state file read back: the journal's frames, its header, and recovery.

A frame is ``length (4 bytes, big-endian) | CRC-32 of the payload (4 bytes) | payload``
(``frame`` makes one, ``read_frames`` splits them). Recovery = snapshot + the longest valid
journal prefix. Zeros after it are the space a journal allocates ahead (``journal.py``), or
what a file system may leave after a power cut (a frame of length 0 is never valid): written
over. A torn tail (an incomplete or bad frame with no valid frame after it: a crash
mid-write) is cut with a warning. Anything else (a bad snapshot, a bad frame followed by good ones,
a record that does not fit the state, another client's file) raises ``StateError`` and both
files are kept aside as ``*.damaged-<time>``, never overwritten. A journal whose header names
another snapshot is stale (a crash between the two renames of a compaction, whose new snapshot
already holds it) and is dropped. A snapshot or journal larger than ``MAX_STATE_BYTES`` is
``StateError``, not read.

``load`` is what ``journal.Journal.recover`` runs; ``read_state`` reads the files the same way,
read-only: no lock, nothing moved or written. The files themselves, and writing them, are
``journal.py``'s.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import os
import re
import stat
import struct
import time
import zlib
from collections.abc import Callable
from typing import Final

from . import codec
from .errors import MQTTSessionError, NewerFormatError, PersistenceError, StateError, UsageError
from .state import SessionState

__all__ = ["JOURNAL_SUFFIX", "MAX_STATE_BYTES", "frame", "free_name", "keep_cut_copy", "load",
           "move_aside", "read_frames", "read_state", "with_queue"]

log = logging.getLogger("mqttsession.journal")  # the state file's logger, as ever

JOURNAL_SUFFIX: Final = ".journal"

_HEAD: Final = struct.Struct(">II")
_PAGE: Final = 4096  # what a write-back writes whole: a page, a file system block
_MAX_FRAME: Final = 256 * 1024 * 1024
_HEADER_TAG: Final = "mqttsession-journal"
_JOURNAL_VERSION: Final = 2  # 2: Accepted / Stepped records are binary; 1 (all JSON) is read too
_RECORD_STARTS: Final = (b"[", b"{", *codec.BINARY_TAGS)
_RECORD_START_BYTES: Final = frozenset(start[0] for start in _RECORD_STARTS)
_SCAN_CHUNK: Final = 32 * 1024  # bytes of a garbage tail compared at once
_TAIL_SCAN: Final = 4 * 1024 * 1024  # bytes before zeros searched for a frame, at most
_ZEROS_HASHED: Final = 64 * 1024 * 1024  # and zeros hashed in that search, at most
_HASHED: Final = 1024 * 1024  # and bytes before the zeros hashed, beyond the bytes searched
_RECORD_START: Final = re.compile(
    b"[" + b"".join(re.escape(bytes([c])) for c in sorted(_RECORD_START_BYTES)) + b"]")
_DESCENDING: Final = bytes(range(255, -1, -1)) * (_SCAN_CHUNK // 256 + 2)
_NOFOLLOW: Final = os.O_NOFOLLOW | os.O_CLOEXEC  # a symlink at a state file's path: ELOOP
MAX_STATE_BYTES = 1 << 30  # a snapshot or journal larger than this is refused, not read


def _fsync_dir(path: str) -> None:
    """The directory holding ``path`` synced: its entries (a new or renamed name) survive a
    power cut."""
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: str) -> None:
    """``path`` and its missing parents made, as ``os.makedirs`` walks them ("a/../b" too), each
    mode 0700 (``os.makedirs`` gives its mode to the last one only) and its name synced in its
    parent: a directory made for records never vanishes in a power cut with them."""
    made: list[str] = []

    def make(p: str) -> None:
        head, tail = os.path.split(p)
        if not tail:
            head, tail = os.path.split(head)
        if head and tail and not os.path.exists(head):
            make(head)
            if tail == os.curdir:
                return
        try:
            os.mkdir(p, 0o700)
            made.append(p)
        except FileExistsError:
            if not os.path.isdir(p):
                raise

    make(os.fspath(path))
    for d in made:
        _fsync_dir(d)


def frame(payload: bytes) -> bytes:
    """One journal frame around ``payload``."""
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def read_frames(data: bytes) -> tuple[list[bytes], int, bool]:
    """Split journal bytes into payloads: (payloads, valid length, damaged mid-file).

    A bad frame followed by a valid record frame that reaches the end of the file is mid-file
    damage; otherwise everything from the first bad frame on is a torn tail. A frame of length
    0 is bad (no record is empty): a tail of zeros, which a file system may leave after a power
    cut, is torn.
    """
    payloads: list[bytes] = []
    pos, size, head = 0, len(data), _HEAD.size
    unpack, crc32 = _HEAD.unpack_from, zlib.crc32
    while pos + head <= size:  # a restore reads every frame here
        length, crc = unpack(data, pos)
        end = pos + head + length
        if end > size or not 0 < length <= _MAX_FRAME:  # length 0: zeros, never a record
            break
        payload = data[pos + head:end]
        if crc32(payload) != crc:
            break
        payloads.append(payload)
        pos = end
    if pos == size:
        return payloads, pos, False
    end = zeros_from(data, pos)
    if end == pos:  # only zeros after the valid frames: space allocated ahead, or torn
        return payloads, pos, False
    if unwritten_page(data, pos, end):  # what follows was not synced either: torn
        return payloads, pos, False
    if end == size:
        return payloads, pos, _ends_in_record_frame(data, pos)
    return payloads, pos, _frame_ends_within(data, pos, end)


def unwritten_page(data: bytes, pos: int, end: int) -> bool:
    """Whether the bad frame at ``pos`` runs into a page the write-back had not reached when
    the power went, with bytes after it (before ``end``, where the zeros that end ``data``
    begin): zeros from ``pos`` (its head too) to a page boundary, or a whole page of zeros
    within the frame. Records not yet synced reach the disk page by page in no set order
    (SessionSync none, interval), so good frames after such a page are a torn tail: not
    synced either, cut with it, never damage [a power cut loses only unsynced records]."""
    head, size = _HEAD.size, len(data)
    boundary = pos + _PAGE - pos % _PAGE
    if boundary - pos >= head and boundary < end and data.count(0, pos, boundary) == boundary - pos:
        return True  # a page written back before the frame at ``pos`` was appended to it
    length = _HEAD.unpack_from(data, pos)[0] if pos + head <= size else 0
    stop = min(pos + head + length if 0 < length <= _MAX_FRAME else pos + head, end)
    q = boundary
    while q < stop and q + _PAGE <= end:  # a page of the frame never written back
        if data.count(0, q, q + _PAGE) == _PAGE:
            return True
        q += _PAGE
    return False


def frames_after(data: bytes, pos: int) -> int:
    """Valid frames right after the bad frame at ``pos``, read by its own length: more than a
    torn last record would be cut with it (a power cut's unwritten page, or a byte gone bad in
    a record holding a page of zeros, which ``unwritten_page`` cannot tell apart)."""
    head, size, n = _HEAD.size, len(data), 0
    length = _HEAD.unpack_from(data, pos)[0] if pos + head <= size else 0
    q = pos + head + length if 0 < length <= _MAX_FRAME else size
    while q + head <= size:
        length, crc = _HEAD.unpack_from(data, q)
        end = q + head + length
        if end > size or not 0 < length <= _MAX_FRAME or zlib.crc32(data[q + head:end]) != crc:
            break
        n, q = n + 1, end
    return n


def keep_cut_copy(path: str, data: bytes, valid: int) -> str:
    """Before the tail from ``valid`` is cut: when valid frames follow the bad one, the file as
    found is kept as ``PATH.cut-<time>`` and the loss logged at ERROR, never cut silently; the
    words for the log line ("" when only a torn last record goes)."""
    n = frames_after(data, valid)
    if not n:
        return ""
    aside = f"{path}.cut-{time.strftime('%Y%m%dT%H%M%S')}-{os.urandom(3).hex()}"
    try:
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(aside)  # the copy's name durable before the cut is
    except OSError as exc:  # (a full disk): nothing cut, no partial copy left; try again later
        with contextlib.suppress(OSError):
            os.unlink(aside)
        raise PersistenceError(exc.errno, f"{path}: a bad record at byte {valid} is followed by"
                                          f" {n} valid ones; the copy kept before cutting them"
                                          f" could not be written ({exc.strerror or exc}):"
                                          " nothing cut") from exc
    log.error("%s: a bad record at byte %d is followed by %d valid ones, cut with it (a power cut"
              " before the write-back reached every page, or damage): the file as found is kept"
              " as %s", path, valid, n, aside)
    return f"; {n} valid records after it, the file kept as {aside}"


def same_file(a: str, b: str, shared: bool = False) -> bool:
    """Whether two ``SessionStateFile`` values name one file (``./x`` and ``x``, a link);
    ``shared``: a gateway's ``LOG#client_id`` names, equal or not."""
    return a == b or (bool(a) and bool(b) and not shared
                      and os.path.realpath(a) == os.path.realpath(b))


#: What the longest name made beside a state file adds to it (``.journal.unrestored-<time>``).
SUFFIX_BYTES: Final = 35


def check_dir(state_dir: object) -> str:
    """A gateway's ``state_dir`` made absolute and resolved (a later ``chdir`` moves nothing;
    "link/.." where the kernel goes); ``UsageError`` for an empty name, bytes or a number."""
    try:
        path = os.fspath(state_dir)  # type: ignore[call-overload]
    except TypeError:
        path = b""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise UsageError(f"state_dir must name a directory (str or os.PathLike[str]), not"
                         f" {state_dir!r}")
    return os.path.realpath(path)


def check_name(path: str) -> str:
    """``path`` made absolute, its directory resolved (a later ``chdir`` moves nothing);
    ``UsageError`` when the names made beside it (journal, temp files, copies set aside,
    disk-queue segments) would be too long for the file system: refused here, not when a
    write, a compaction or a copy set aside fails in the middle of a run."""
    if path.endswith(os.sep):
        raise UsageError(f"SessionStateFile {path} names a directory: give a file's name")
    folder, base = os.path.split(os.path.join(os.getcwd(), path))
    # its directory as the kernel finds it ("link/.." through a symlink), the name as given
    # (a symlink there is refused when opened): one form for every name made from it
    folder = os.path.realpath(folder)
    path = os.path.join(folder, base)
    try:
        name_max, path_max = os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):  # (a missing directory: ``require_directory`` names it)
        name_max, path_max = 255, 4096
    size, whole = len(os.fsencode(base)), len(os.fsencode(path))
    if size + SUFFIX_BYTES > name_max:
        raise UsageError(f"SessionStateFile {path}: its name is {size} bytes; the names made"
                         f" beside it add up to {SUFFIX_BYTES} more, past the file system's"
                         f" {name_max}: choose a shorter one")
    if whole + 160 > path_max:
        raise UsageError(f"SessionStateFile {path}: the path is {whole} bytes; its disk queue's"
                         f" files add up to 160 more, past the file system's {path_max}: choose"
                         " a shorter one")
    return path


def free_name(path: str) -> str:
    """``path`` or ``path-2``, ``path-3``...: a name no file has."""
    name, n = path, 1
    while os.path.lexists(name):
        n += 1
        name = f"{path}-{n}"
    return name


def move_aside(path: str, paths: tuple[str, ...], label: str) -> list[str]:
    """Rename those of ``paths`` that exist to ``*.<label>-<time>``; the new names.
    ``PersistenceError`` (all left in place) when one cannot be moved."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved: list[tuple[str, str]] = []
    try:
        for p in paths:
            if os.path.lexists(p):
                aside = free_name(f"{p}.{label}-{stamp}")
                os.replace(p, aside)
                moved.append((p, aside))
    except OSError as exc:  # (a directory that refuses renames)
        for p, aside in reversed(moved):
            with contextlib.suppress(OSError):
                os.replace(aside, p)
        raise PersistenceError(exc.errno, f"cannot keep {path} aside: {exc.strerror or exc};"
                                          " left in place") from exc
    return [aside for _p, aside in moved]


def zeros_from(data: bytes, pos: int) -> int:
    """Where the run of zero bytes that ends ``data`` (after ``pos``) begins: the space a
    journal allocates ahead of its records (``len(data)`` when the last byte is not zero)."""
    end, step = len(data), _SCAN_CHUNK
    while end - step >= pos and data.count(0, end - step, end) == step:
        end -= step
    while end > pos and data[end - 1] == 0:
        end -= 1
    return end


def _frame_ends_within(data: bytes, pos: int, end: int) -> bool:
    """Whether a valid record frame starting after ``pos`` ends in the zeros at ``end`` or
    later (its payload may end in zeros itself), with only zeros after it: the damage test of
    ``read_frames`` for a file written over zeros. The candidates (a record's first byte after
    a frame head) are found at C speed and checked nearest the end first, so a real last frame
    is found before the budgets run out: its bytes before ``end`` count against ``end - pos``
    plus ``_HASHED`` (a torn frame's own bytes hold candidates too: a short write's half frame
    holding two spent ``end - pos``), the zeros it covers against ``_ZEROS_HASHED``. Past a
    budget, or ``_TAIL_SCAN`` bytes before the zeros, the answer is yes: the file is kept,
    never cut."""
    if end - pos > _TAIL_SCAN:
        return True
    size, head = len(data), _HEAD.size
    unpack, crc32 = _HEAD.unpack_from, zlib.crc32
    budget, zeros = end - pos + _HASHED, _ZEROS_HASHED
    view = memoryview(data)
    lo, hi = pos + 1 + head, min(end + head, size)  # where a candidate's payload starts
    while hi > lo:
        start = max(lo, hi - _SCAN_CHUNK)
        for p in reversed([m.start() for m in _RECORD_START.finditer(data, start, hi)]):
            length, crc = unpack(data, p - head)
            stop = p + length
            if length and end <= stop <= size:
                budget -= end - p
                zeros -= stop - end
                if budget < 0 or zeros < 0 or crc32(view[p:stop]) == crc:
                    return True
        hi = start
    return False


def _ends_in_record_frame(data: bytes, pos: int) -> bool:
    """Whether a valid record frame starting after ``pos`` ends exactly at the end of ``data``.

    Linear in the tail: a frame at ``q`` ending at the end has length ``size - q - 8``, so the
    low byte of its length field is known for every ``q``; the offsets where it matches are
    found a chunk at a time at C speed (one in 256 for random data or zeros) and checked in
    full, the nearest the end first. Their CRCs hash at most the tail once (a real last frame
    is found first, within it): past that budget, which only crafted data reaches, the answer
    is yes, so the file is kept, never cut.
    """
    size, head = len(data), _HEAD.size
    lo = max(pos + 1, size - head - _MAX_FRAME) + 3  # the low length byte of the first ...
    stop = size - head + 3  # ... and past that of the last candidate (payload >= 1 byte)
    budget = size - pos
    view = memoryview(data)
    unpack, crc32, starts = _HEAD.unpack_from, zlib.crc32, _RECORD_START_BYTES
    while stop > lo:
        start = max(lo, stop - _SCAN_CHUNK)
        first = (size - head + 3 - start) & 0xFF  # the low byte expected at ``start``
        expected = _DESCENDING[255 - first:255 - first + stop - start]
        same = (int.from_bytes(view[start:stop], "big")
                ^ int.from_bytes(expected, "big")).to_bytes(stop - start, "big")
        i = same.rfind(0)
        while i >= 0:
            q = start + i - 3
            length, crc = unpack(data, q)
            if length == size - q - head and data[q + head] in starts:
                budget -= length
                if budget < 0 or crc32(view[q + head:]) == crc:
                    return True
            i = same.rfind(0, 0, i)
        stop = start
    return False


def _refuse_link(path: str, exc: OSError) -> None:
    """``StateError`` for a symlink where a state file should be (``O_NOFOLLOW`` refused it)."""
    if exc.errno == errno.ELOOP:
        raise StateError(f"{path} is a symbolic link; a state file, its journal and its lock"
                         " must be regular files (refused, nothing written)") from None


def refuse_foreign(st: os.stat_result, path: str) -> None:
    """``StateError`` for a file or directory another user owns: in a shared directory (/tmp)
    they could plant messages to send as ours, or read what we write (root too: refused)."""
    uid = os.geteuid()
    if st.st_uid != uid:
        raise StateError(f"{path} belongs to uid {st.st_uid}, not to this process's uid {uid};"
                         " refused, nothing read or written (chown it, or choose another path)")


def own_dir(path: str, read_only: bool = False) -> None:
    """``StateError`` but for a directory (not a symlink) of ours (``refuse_foreign``); a wider
    mode narrowed to 0700 (``read_only``: any directory, as it is)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise StateError(f"{path} is not a directory (a symbolic link is refused)")
    if not read_only:
        refuse_foreign(st, path)
        if st.st_mode & 0o077:
            with contextlib.suppress(OSError):  # (FAT: no modes to change; it is ours)
                os.chmod(path, 0o700)


def _header(payload: bytes) -> tuple[int, str, str] | None:
    """(format version, snapshot digest, client id) of a journal header frame."""
    try:
        arr = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if (isinstance(arr, list) and len(arr) == 4 and arr[0] == _HEADER_TAG
            and type(arr[1]) is int and 1 <= arr[1]
            and isinstance(arr[2], str) and isinstance(arr[3], str)):
        return arr[1], arr[2], arr[3]
    return None


def unreadable(what: str, exc: OSError) -> MQTTSessionError:
    """The error for a file that cannot be read: ``PersistenceError`` when the machine lacks
    something now (file descriptors, memory: the state is fine), else ``StateError``."""
    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN):
        return PersistenceError(exc.errno, f"{what}: {exc.strerror or exc}")
    return StateError(f"{what}: {exc.strerror or exc}")


def _read_file(path: str, mine: bool = False) -> bytes | None:
    """The bytes of ``path`` (None: no such file); ``StateError`` past ``MAX_STATE_BYTES``, or
    for anything but a regular file (a directory, a FIFO: opened without blocking, not read);
    ``mine``: also for a file another user owns (``refuse_foreign``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)  # a FIFO: no wait for a writer
    except FileNotFoundError:
        return None
    except OSError as exc:
        _refuse_link(path, exc)
        raise unreadable(f"cannot read state file {path}", exc) from exc
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):  # before open(): a directory is IsADirectoryError there
        os.close(fd)
        raise StateError(f"{path} is not a regular file; not read")
    if mine:
        try:
            refuse_foreign(st, path)
        except StateError:
            os.close(fd)
            raise
    with open(fd, "rb") as f:
        size = st.st_size
        if size > MAX_STATE_BYTES:
            raise StateError(f"{path} is {size} bytes, larger than the {MAX_STATE_BYTES} bytes a"
                             " state file may be; not read")
        return f.read()


def load(path: str, client_id: str, damaged: Callable[[str], StateError],
          *, read_only: bool = False, notes: list[str] | None = None
          ) -> tuple[SessionState, int, int | None, bool]:
    """Snapshot + valid journal prefix of ``path``; ``damaged(why)`` makes the error to raise.

    Returns the state, the snapshot's size, where the journal's valid part ends when it
    belongs to this snapshot (None: there is no usable journal to append to), and whether
    bytes other than zeros follow it (a torn tail, to cut before appending; zeros are the
    space the journal allocated ahead, written over in place). ``notes`` gets the words for
    ``on_error`` when valid records were cut with a bad one (``keep_cut_copy``).
    """
    with codec.gc_paused():
        return _load_files(path, client_id, damaged, read_only, notes)


def _load_files(path: str, client_id: str, damaged: Callable[[str], StateError],
                read_only: bool, notes: list[str] | None = None
                ) -> tuple[SessionState, int, int | None, bool]:
    journal_path = path + JOURNAL_SUFFIX
    snapshot = _read_file(path, mine=not read_only)
    if snapshot is not None and not read_only and os.lstat(path).st_nlink > 1:
        # a second name has its own lock and journal: two owners of one session
        raise StateError(f"{path} has {os.lstat(path).st_nlink} names (hard links): a state"
                         " file must have one; refused, nothing written")
    if snapshot is None:
        if os.path.lexists(journal_path):  # (a kill -9 putting a session back between its
            aside = sorted(glob.glob(glob.escape(path) + ".unrestored-*[0-9]"))  # two files)
            raise damaged("journal without its snapshot" + (
                f" (a snapshot set aside is {aside[-1]}: put it back at {path}, and this"
                f" journal at {journal_path}, to restore the session)" if aside else ""))
        return SessionState(client_id=client_id, clean_session=False), 0, None, False
    try:
        state, digest = codec.decode_with_digest(snapshot)
    except NewerFormatError as exc:  # not damage: left where it is, for the newer version
        raise NewerFormatError(f"state file {path}: {exc} (nothing was changed)") from None
    except StateError as exc:
        raise damaged(str(exc)) from None
    if client_id and state.client_id and state.client_id != client_id:
        raise StateError(
            f"state file {path} belongs to client id {state.client_id!r}, not {client_id!r}"
        )
    data = _read_file(journal_path, mine=not read_only)
    if data is None:
        return state, len(snapshot), None, False
    payloads, valid, damaged_mid = read_frames(data)
    if damaged_mid:
        raise damaged(f"journal frame at byte {valid} is bad but later ones are good")
    cut = "ignored" if read_only else "cut"
    if not payloads:
        if data:
            log.warning("state journal %s: torn header %s (%d bytes)", journal_path, cut, len(data))
        return state, len(snapshot), None, False
    header = _header(payloads[0])
    if header is None:
        raise damaged("journal header is not valid")
    version, named, owner = header
    if version > _JOURNAL_VERSION:
        raise NewerFormatError(f"state journal {journal_path}: format version {version} is newer"
                               f" than this mqttsession reads ({_JOURNAL_VERSION}); upgrade"
                               " mqttsession (nothing was changed)")
    if version == 1:
        digest = hashlib.sha256(snapshot.strip()).hexdigest()
    if named != digest:
        log.info("state journal %s is older than its snapshot: %s", journal_path,
                 "ignored" if read_only else "dropped")
        return state, len(snapshot), None, False
    if owner != state.client_id:
        raise damaged(f"journal is for client id {owner!r}")
    for i, payload in enumerate(payloads[1:], 1):
        try:
            state.apply(codec.decode_record(payload))
        except NewerFormatError as exc:
            raise NewerFormatError(f"state journal {journal_path}: record {i}: {exc}; upgrade"
                                   " mqttsession (nothing was changed)") from None
        except MQTTSessionError as exc:
            raise damaged(f"journal record {i}: {exc}") from None
    torn = valid < len(data) and zeros_from(data, valid) > valid
    if torn:
        kept = "" if read_only else keep_cut_copy(journal_path, data, valid)
        log.warning("state journal %s: torn tail of %d bytes %s (a crash mid-write, or a power"
                    " cut before the write-back reached every page)%s", journal_path,
                    len(data) - valid, cut, kept)
        if kept and notes is not None:
            notes.append(f"state journal {journal_path}: a bad record at byte {valid} was cut"
                         f" with what followed it{kept}")
    return state, len(snapshot), valid, torn


def read_state(path: str, client_id: str = "") -> SessionState:
    """The session in a state file, read-only: no lock taken, nothing moved or written.

    Same recovery as ``Journal.recover`` (a torn tail is ignored); damage raises ``StateError``
    and leaves the files where they are. A missing file is an empty session.
    """
    path = os.fspath(path)
    state = load(path, client_id,
                  lambda why: StateError(f"state file {path} is damaged: {why}"), read_only=True)[0]
    return with_queue(state, path)


def with_queue(state: SessionState, path: str) -> SessionState:
    """``state`` with its disk queue (``path`` + ``.queue``) counted in, read-only."""
    from .spool import Spool  # (it builds on this module)
    from .store import attach

    spool = Spool(path, state.client_id, read_only=True)
    spool.recover(state.spool_next)
    attach(state, spool)
    return state
