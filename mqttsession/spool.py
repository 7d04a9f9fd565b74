"""The disk queue: never-sent outgoing messages in append-only segment files.

A session with a state file ``P`` keeps at most ``QueueInMemory`` never-sent messages in memory;
the ones published beyond that go here, to the directory ``P.queue`` (mode 0700), and are read
back, in publish order, as the in-flight window has room (``state.Loaded``, a journal record).
Memory and start-up time follow the window, not the queue's length.

Files (mode 0600, never opened through a symlink):

- ``q-<first seq>.open``: the segment being appended to: a header frame
  (``["mqttsession-queue", 1, client id, first seq, prev]``, ``prev`` the newest seq queued
  before it, so a restart finds a segment deleted before it) and one journal frame
  (``journal.frame``) per message, its ``Accepted`` record (``records.encode_message``), over
  zeros written ahead (copied into a mapping of the file unless synced at once: ``mapped.py``);
- ``q-<first>-<last>-<count>-<bytes>-<size>-p<prev>.seg``: a full segment, sealed by a rename once it
  passed ``SEGMENT_BYTES`` (fsynced first under ``SessionSync=always``). Its name holds what a
  restart needs, so a restart reads only the segment being read back and the open one.

Whole segments are deleted once every message in them was read back and that is durable in
the journal (``retire``); nothing is ever rewritten. Recovery: a sealed segment whose size is
not the one its name says, one named read back that holds a message not yet read back, a
damaged frame followed by good ones in the open segment, a segment missing before another
(``gap``: the store decides) or of another client is ``StateError`` (the files are kept); a
torn tail of the open segment (a crash mid-write, a power cut's zeros) is cut. A sealed
segment found damaged while read back is kept aside (``*.damaged-<time>``) and reported
(``take_errors``): the messages after the damage in it are lost, never invented or reordered."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from typing import Final, Iterator, cast

from .errors import PersistenceError, StateError
from .journal import _write_all, zeros_ahead
from .mapped import MappedTail
from .statelock import _own_file, unlinked
from .recovery import (_NOFOLLOW, _fsync_dir, frame, free_name, keep_cut_copy, own_dir,
                       read_frames, unreadable, zeros_from)
from .records import Accepted, OutgoingMessage, decode_queued, decode_record, encode_message
from .segments import (DAMAGED_NAME, OPEN_NAME, SEALED_NAME, Segment, check_regular, check_sealed,
                       gap, header, read_header)
from .state import message_bytes

__all__ = ["QUEUE_SUFFIX", "SEGMENT_BYTES", "Spool"]

log = logging.getLogger(__name__)

QUEUE_SUFFIX: Final = ".queue"
SEGMENT_BYTES: Final = 1024 * 1024  # a segment is sealed past this; a restart reads <= 2
_CREATE: Final = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW  # written at ``seg.size``
_Mark = tuple[int, int, int, int, int, list[bytes], int, int, int, int]  # (``Spool.mark``)


class Spool:
    """The disk queue of one state file; its own lock (callers' locks are theirs)."""

    def __init__(self, state_path: str, client_id: str = "", sync: bool = True,
                 segment_bytes: int = SEGMENT_BYTES, read_only: bool = False,
                 mapped: bool = True) -> None:
        self.dir = os.fspath(state_path) + QUEUE_SUFFIX
        self.client_id = client_id
        self.sync = sync
        self.mapped = mapped  # appends not synced at once are mapped (``Journal.mapped``)
        self.segment_bytes = segment_bytes
        self.read_only = read_only
        self.count = 0  # messages not read back yet
        self.bytes = 0
        self.last_seq = 0  # the newest message's seq (0: none ever, in these files)
        self.gap: int | None = None  # messages up to it not read back are missing (``segments.gap``)
        self._newest: float | None = None  # its publish time (None: not read yet)
        self.read_to = 0  # every message below it was read back, or lost to damage
        self._segs: list[Segment] = []
        self._ri = 0  # index in _segs of the segment being read back
        self._roff = 0  # offset in it of the next frame to read (0: before its header)
        self._rcount = self._rbytes = 0  # messages read from it, and their bytes
        self._frames: list[bytes] = []  # frames of it read ahead (from _roff at ``_fi``)
        self._fi = self._moved = 0  # ``_moved``: damage or a retire moved the read (``mark``)
        self._wfd: int | None = None  # the open segment (the last), for appending
        self._walloc = 0  # its file's size: its frames, and zeros written ahead of them
        self._wseek = False  # its fd's offset is to be set to the segment's end first
        self._map = MappedTail()  # the open segment's file: frames copied in, no write()
        self._errors: list[tuple[int, str]] = []
        self._unsynced = False  # appended without a sync since the last one (policy syncs)
        self._look_at = 0.0  # when ``_sync_open`` asks whether the open segment was deleted
        # SessionSync=interval: the open segment's bytes from ``_tail_at`` appended since its
        # last sync (at most a segment); ``_suspect``: a sync of them failed
        self._tail: list[bytes] = []
        self._tail_at, self._suspect = 0, False
        self._undo: tuple[int, bytes, Segment, tuple[int, int, int, int],
                          tuple[int, float | None, int, int]] | None = None  # the last append's
        self._mutex = threading.RLock()

    # ------------------------------------------------------------------ recovery

    def recover(self, spool_next: int, sync_open: bool = True, rewrite: bool = False) -> None:
        """Find the segments and where reading back resumes (every message below
        ``spool_next`` was read back); ``StateError`` on damage (the files are kept).
        ``sync_open``: the open segment synced (a killed process's appends, after the
        journal's); ``rewrite``: written again first (``interval``: a failed write-back)."""
        with self._mutex:
            self._close_fds()
            self._segs, self._ri, self._roff, self._frames, self._fi = [], 0, 0, [], 0
            self._rcount = self._rbytes = self.count = self.bytes = self.last_seq = 0
            self._newest = self.gap = None
            self.read_to = spool_next
            try:
                own_dir(self.dir, self.read_only)
                names = os.listdir(self.dir)
            except FileNotFoundError:
                return
            except OSError as exc:
                raise unreadable(f"cannot read the disk queue {self.dir}", exc) from exc
            segs, damaged = [], []
            for name in names:
                path = os.path.join(self.dir, name)
                m = SEALED_NAME.match(name)
                if m is not None:
                    first, last, count, nbytes, size = map(int, m.groups()[:5])
                    prev = None if m.group(6) is None else int(m.group(6))
                    segs.append(Segment(first, path, True, last, count, nbytes, size, prev))
                elif (m := OPEN_NAME.match(name)) is not None:
                    segs.append(Segment(int(m.group(1)), path, False))
                elif (m := DAMAGED_NAME.match(name)) is not None:
                    damaged.append(int(m.group(1)))
            segs.sort(key=lambda s: s.first)
            for seg in segs:
                st = check_regular(seg)
                if seg.sealed:
                    check_sealed(seg, st)
                else:
                    self._scan_open(seg)
            segs = [seg for seg in segs if seg.size]  # an open one with a torn header: gone
            prev = 0
            for seg in segs:
                if seg.count and (seg.first <= prev or seg.last < seg.first):
                    raise StateError(f"disk queue {self.dir}: segment {os.path.basename(seg.path)}"
                                     " is out of order")
                prev = max(prev, seg.last)
            # segments read back before a crash whose deletion did not happen
            while segs and segs[0].last < spool_next and (segs[0].sealed or len(segs) > 1):
                dead = segs.pop(0)
                if not self.read_only:
                    if dead.sealed:
                        self._check_read_back(dead, spool_next)
                    self._unlink(dead.path)
            self._segs = segs
            self.gap = gap(segs, spool_next, damaged)
            self.last_seq = max((s.last for s in segs), default=0)
            self.count = sum(s.count for s in segs)
            self.bytes = sum(s.bytes for s in segs)
            if segs and segs[0].first < spool_next:  # part of it was read back
                self._skip_to(spool_next)
            if segs and not segs[-1].sealed and not self.read_only:
                self._open_writer(segs[-1])
                if sync_open and self.sync and segs[-1].count:  # a killed process's appends,
                    self._unsynced = True  # maybe in the page cache only: on disk now
                    if rewrite:
                        self._tail = [self._read(segs[-1].path, 0, segs[-1].size)]
                        self._tail_at, self._suspect = 0, True
                    try:
                        self.sync_pending()
                    except PersistenceError as exc:  # (the next sync tries again)
                        log.warning("%s", exc)

    def _check_read_back(self, seg: Segment, spool_next: int) -> None:
        """Before a sealed segment named read back is deleted: none of its messages is still
        to be read (``StateError`` otherwise, the file kept). Unreadable frames (a power cut's
        zeros under ``none``) are no such proof; the journal says they were read back."""
        payloads, _valid, _damaged = read_frames(self._read(seg.path))
        if not payloads or not self._header_ok(payloads[0], seg):
            return
        for payload in payloads[1:]:
            try:
                m = self._message(payload, seg.path)
            except StateError:
                continue
            if m.seq >= spool_next:
                raise StateError(f"disk queue segment {seg.path} holds message {m.seq}, not yet"
                                 f" read back, but its name says it ends at {seg.last}; kept")

    def _read(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        """``path``'s bytes from ``offset`` (to ``size``: no fstat to slow an fdatasync)."""
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        try:
            if size is None:
                size = os.fstat(fd).st_size
            return os.pread(fd, max(0, size - offset), offset) if size > offset else b""
        finally:
            os.close(fd)

    def _header_ok(self, payload: bytes, seg: Segment) -> bool:
        if (found := read_header(payload, seg.first)) is None:
            return False
        owner, seg.prev = found
        if self.client_id and owner and owner != self.client_id:
            raise StateError(f"disk queue {self.dir} is for client id {owner!r}")
        return True

    @staticmethod
    def _message(payload: bytes, where: str) -> OutgoingMessage:
        """The queued message a frame holds; ``StateError`` naming ``where`` otherwise."""
        try:
            rec = decode_record(payload)
        except StateError as exc:  # (a NewerFormatError stays one)
            raise type(exc)(f"{where}: {exc}") from None
        if type(rec) is not Accepted or rec.message.packet_id:
            raise StateError(f"{where}: not a queued message")
        return rec.message

    def _messages(self, payloads: list[bytes], where: str) -> Iterator[OutgoingMessage]:
        for payload in payloads:
            yield self._message(payload, where)

    def _scan_open(self, seg: Segment) -> None:
        """Read the open segment: its messages counted, a torn tail cut."""
        data = self._read(seg.path)
        payloads, valid, damaged_mid = read_frames(data)
        if damaged_mid:
            raise StateError(f"disk queue segment {seg.path}: frame at byte {valid} is bad but"
                             " later ones are good; kept")
        if not payloads or not self._header_ok(payloads[0], seg):
            if not payloads and valid == 0:  # created, the header torn: nothing in it
                seg.size = 0
                if not self.read_only:
                    self._unlink(seg.path)
                seg.count = 0
                return
            raise StateError(f"disk queue segment {seg.path}: its header is not valid; kept")
        prev = seg.first - 1
        for m in self._messages(payloads[1:], seg.path):
            if m.seq <= prev:
                raise StateError(f"disk queue segment {seg.path}: seq {m.seq} out of order")
            prev, self._newest = m.seq, m.accepted_at
            seg.count += 1
            seg.bytes += message_bytes(m)
        seg.last = prev if seg.count else 0
        seg.size = valid
        if zeros_from(data, valid) > valid:  # (zeros alone: written ahead, written over)
            kept = "" if self.read_only else keep_cut_copy(seg.path, data, valid)
            log.warning("disk queue segment %s: torn tail of %d bytes %s (a crash mid-write)%s",
                        seg.path, len(data) - valid, "ignored" if self.read_only else "cut", kept)
            if kept:  # valid messages went with it: the application is told (on_error)
                self._errors.append((-1, f"disk queue segment {seg.path}: a bad message at byte"
                                         f" {valid} was cut with what followed it{kept}"))
            if not self.read_only:
                fd = os.open(seg.path, os.O_WRONLY | _NOFOLLOW)
                try:
                    os.ftruncate(fd, valid)
                    os.fsync(fd)  # cut on disk before anything is written over it
                finally:
                    os.close(fd)

    def _skip_to(self, spool_next: int) -> None:
        """Position reading at the first message at or after ``spool_next``."""
        seg = self._segs[0]
        while self._fill(seg):
            m = self._peek_message()
            if m is None or m.seq >= spool_next:
                return
            self._take(1, [])

    # ------------------------------------------------------------------ writing

    def _open_writer(self, seg: Segment) -> None:
        fd = os.open(seg.path, os.O_RDWR | _NOFOLLOW)
        try:
            _own_file(fd, seg.path)
            self._walloc = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        self._wfd, self._wseek = fd, True

    def _new_segment(self, first: int) -> Segment:
        try:
            os.mkdir(self.dir, 0o700)
        except FileExistsError:
            pass
        own_dir(self.dir, self.read_only)  # (made now, or found: no symlink, ours)
        if self.sync and not self._segs:  # the queue's own name durable in its parent too
            _fsync_dir(self.dir)  # (made now, or by a run that did not sync: a power cut)
        seg = Segment(first, os.path.join(self.dir, f"q-{first:020d}.open"), False, prev=self.last_seq)
        try:  # (one an interrupt left, not a segment of ours: made again)
            fd = os.open(seg.path, _CREATE, 0o600)
        except FileExistsError:
            self._unlink(seg.path)
            fd = os.open(seg.path, _CREATE, 0o600)
        try:
            head = frame(header(self.client_id, first, seg.prev))
            _write_all(fd, head)
            if self.sync:
                os.fdatasync(fd)
                _fsync_dir(seg.path)
        except BaseException:
            os.close(fd)
            self._unlink(seg.path)
            raise
        seg.size = self._walloc = len(head)
        self._wfd, self._wseek = fd, False
        self._tail, self._suspect = [], False
        self._segs.append(seg)
        return seg

    def _seal(self, seg: Segment) -> None:
        """The open segment is full: its name takes what a restart needs to know."""
        assert self._wfd is not None
        self._map.drop()  # (a mapping past the file's end would fault)
        if self._walloc > seg.size:  # the zeros written ahead: the name says its size
            os.ftruncate(self._wfd, seg.size)
        if self.sync:
            self._sync_open()
        self._close_fds()
        name = (f"q-{seg.first:020d}-{seg.last:020d}-{seg.count}-{seg.bytes}-{seg.size}"
                f"{'' if seg.prev is None else f'-p{seg.prev}'}.seg")
        path = os.path.join(self.dir, name)
        os.rename(seg.path, path)
        seg.path, seg.sealed = path, True  # (before the directory's sync, which may fail)
        if self.sync:
            _fsync_dir(path)

    @property
    def newest_first(self) -> int:  # the first seq of the newest segment (0: none)
        return self._segs[-1].first if self._segs else 0

    def roll_due(self) -> bool:
        """Whether the next append syncs first (a full segment sealed, a new one begun) or
        waits for another thread's sync (the interval timer's: the mutex held); a hint."""
        segs = self._segs
        if self.sync and (self._wfd is None or not segs or segs[-1].size >= self.segment_bytes):
            return True
        if not self._mutex.acquire(blocking=False):
            return True
        self._mutex.release()
        return False

    def roll_ahead(self, first: int) -> None:
        """``append``'s seal of a full segment and new one (from ``first``, the next message's
        seq: a lower bound) made before it, off a loop (``compacting``); OSError as it raised."""
        with self._mutex:
            if self.sync:
                self._roll(first)

    def _roll(self, first: int) -> Segment:
        """The segment to append to (mutex held): the open one; once full, sealed and a new
        one begun."""
        seg = self._segs[-1] if self._segs and self._wfd is not None else None
        if seg is not None and seg.size >= self.segment_bytes:
            self._seal(seg)
            seg = None
        return self._new_segment(first) if seg is None else seg

    def append(self, messages: list[OutgoingMessage], sync: bool) -> None:
        """Store never-sent messages, in one write (persistence point 1): in the OS before
        returning, on disk with ``sync`` under ``SessionSync=always``; ``PersistenceError``
        otherwise (and none of them stored)."""
        if len(messages) == 1:  # (a publish's: no list, no join)
            data, n = frame(encode_message(messages[0])), message_bytes(messages[0])
        else:  # a Spooled record's bytes each
            data = b"".join([frame(encode_message(m)) for m in messages])
            n = sum(map(message_bytes, messages))
        with self._mutex:
            try:
                seg = self._roll(messages[0].seq)
                self._undo = (messages[0].seq, data, seg, (seg.size, seg.count, seg.bytes, seg.last),
                              (self.last_seq, self._newest, self.count, self.bytes))
                try:  # (a Ctrl-C too, anywhere: the publish is taken back, its seq reused)
                    self._put(seg, data, self.mapped and not (sync and self.sync))
                    if sync and self.sync:
                        self._sync_open()
                    elif self.sync:
                        if not self._tail:
                            self._tail_at = seg.size
                        self._tail.append(data)
                        self._unsynced = True
                    k, seg.size, seg.last = len(messages), seg.size + len(data), messages[-1].seq
                    seg.count, seg.bytes, self.count, self.bytes = \
                        seg.count + k, seg.bytes + n, self.count + k, self.bytes + n
                    self.last_seq, self._newest = seg.last, messages[-1].accepted_at
                except BaseException:
                    self.take_back(messages[0].seq)
                    raise
            except OSError as exc:
                raise PersistenceError(exc.errno, f"cannot write the disk queue {self.dir}:"
                                                  f" {exc.strerror or exc}") from exc

    def take_back(self, seq: int) -> bool:
        """The last append's messages from ``seq`` were taken back (its publish raised, a
        Ctrl-C or a fault, after they were written): the open segment cut back to its size
        before. False: nothing to take back."""
        with self._mutex:
            undo, fd = self._undo, self._wfd
            if undo is None or undo[0] < seq or fd is None or undo[2] is not self._segs[-1]:
                return False
            _, data, seg, counts, totals = undo
            seg.size, seg.count, seg.bytes, seg.last = counts
            self.last_seq, self._newest, self.count, self.bytes = totals
            self._undo, self._wseek, size = None, True, seg.size
            if self._tail and self._tail[-1] is data:
                self._tail.pop()
            self._map.drop()
            try:
                os.ftruncate(fd, size)
                self._walloc = size
            except OSError:  # zeros over it instead (its blocks are allocated): a restart
                with contextlib.suppress(OSError):  # must not find a publish told "failed"
                    _write_all(fd, bytes(len(data)), size)
            return True

    def _put(self, seg: Segment, data: bytes, mapped: bool) -> None:
        """Write ``data`` at the open segment's end, over zeros written ahead (``zeros_ahead``);
        ``mapped``: copied into a mapping of the file, no system call (``Journal._put``)."""
        fd = self._wfd
        assert fd is not None
        end = seg.size + len(data)
        if end > self._walloc:
            self._walloc = zeros_ahead(fd, self._walloc, end, self.segment_bytes)
        if mapped and self._map.put(fd, self._walloc, seg.size, data):
            self._wseek = True  # (the fd's offset did not move)
            return
        if self._wseek:
            os.lseek(fd, seg.size, os.SEEK_SET)
            self._wseek = False
        _write_all(fd, data)
        self._walloc = max(self._walloc, end)

    def sync_pending(self) -> None:
        """The open segment's appends not synced, on disk (``interval``); ``PersistenceError``."""
        with self._mutex:
            if not self._unsynced or self._wfd is None:
                return
            try:
                self._sync_open()
            except OSError as exc:
                raise PersistenceError(exc.errno, f"cannot sync the disk queue {self.dir}:"
                                                  f" {exc.strerror or exc}") from exc

    def _sync_open(self) -> None:
        """fdatasync the open segment. After a failed one its unsynced appends are written
        again first, from memory: Linux marks the pages of a failed write-back clean, so a
        sync that then succeeds would not write them (the "fsyncgate" of PostgreSQL)."""
        fd = self._wfd
        assert fd is not None
        try:
            if (now := time.monotonic()) >= self._look_at:  # deleted in use (``rm -rf``)? once
                self._look_at = now + 1.0  # a second (a system call hands the GIL over)
                if unlinked(fd):
                    raise OSError(errno.ENOENT, "its open segment was deleted while in use")
            if self._suspect and self._tail:
                _write_all(fd, b"".join(self._tail), self._tail_at)
            os.fdatasync(fd)
        except OSError:
            self._suspect = True
            raise
        self._tail.clear()
        self._suspect = self._unsynced = False

    # ------------------------------------------------------------------ reading back

    def _fill(self, seg: Segment) -> bool:
        """Frames of ``seg`` from the read position are in ``_frames``; False: none left."""
        if self._fi < len(self._frames):
            return True
        if self._roff >= seg.size:
            return False
        data = self._read(seg.path, self._roff, seg.size)
        payloads, valid, _ = read_frames(data)
        if self._roff == 0:
            if not payloads or not self._header_ok(payloads[0], seg):
                self._damaged(seg, "its header is not valid")
                return False
            self._roff += 8 + len(payloads[0])
            payloads = payloads[1:]
        if valid < len(data) and not payloads:
            self._damaged(seg, f"frame at byte {self._roff} is bad")
            return False
        self._frames, self._fi = payloads, 0
        return bool(payloads)

    def _peek_message(self) -> OutgoingMessage | None:
        seg = self._segs[self._ri]
        try:
            return self._message(self._frames[self._fi], seg.path)
        except StateError as exc:
            self._damaged(seg, str(exc))
            return None

    def _take(self, n: int, out: list[OutgoingMessage]) -> None:
        """Up to ``n`` messages of the frames read ahead, into ``out`` (none: damage); taken
        and counted after the loop (an interrupt in it changes nothing)."""
        frames, fi, size, nb = self._frames, self._fi, 0, 0
        i = fi
        while i < len(frames) and i - fi < n:
            if (found := decode_queued(frames[i])) is None:  # an older record, or damage:
                if i > fi or (m := self._peek_message()) is None:  # (``_damaged`` reads the
                    break  # counts, and moves the read: nothing taken here)
                found = m, message_bytes(m)
            out.append(found[0])
            i, size, nb = i + 1, size + 8 + len(frames[i]), nb + found[1]
        if k := i - fi:
            self._fi = i
            self._roff, self._rcount, self.read_to = self._roff + size, self._rcount + k, out[-1].seq + 1
            self.count, self.bytes, self._rbytes = self.count - k, self.bytes - nb, self._rbytes + nb

    def _damaged(self, seg: Segment, why: str) -> None:
        """A segment found damaged while read back: kept aside, the rest of it skipped."""
        lost = max(0, seg.count - self._rcount)
        self.read_to = max(self.read_to, seg.last + 1)
        self.count -= lost
        self.bytes -= max(0, seg.bytes - self._rbytes)
        aside = f"{seg.path}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
        if not self.read_only:
            try:
                if self._wfd is not None and seg is self._segs[-1]:
                    self._close_fds()
                os.rename(seg.path, aside)
            except OSError:
                aside = seg.path
        text = (f"disk queue segment {seg.path} is damaged ({why}): {lost} queued messages in it"
                f" after the damage are lost; kept as {aside}")
        log.error("%s", text)
        self._errors.append((-1, text))
        self._frames, self._fi, self._moved = [], 0, self._moved + 1
        seg.size = self._roff  # nothing more is read from it
        seg.sealed = True

    def read(self, n: int) -> list[OutgoingMessage]:
        """Up to ``n`` messages, the oldest not read back yet, in publish order."""
        out: list[OutgoingMessage] = []
        with self._mutex:
            while len(out) < n and self._ri < len(self._segs):
                seg = self._segs[self._ri]
                if not self._fill(seg):
                    if seg.sealed or self._ri < len(self._segs) - 1:
                        self._ri, self._roff, self._rcount, self._rbytes = self._ri + 1, 0, 0, 0
                        continue
                    break  # the open segment: all read
                self._take(n - len(out), out)
            if not out and self.count < 0:  # pragma: no cover - a count gone wrong
                self.count = self.bytes = 0
        return out

    def mark(self) -> object:
        """Where reading back stands, for ``reset``."""
        with self._mutex:
            return (self._moved, self._ri, self._roff, self._rcount, self._rbytes, self._frames,
                    self._fi, self.read_to, self.count, self.bytes)

    def reset(self, mark: object) -> None:
        """Reading back where ``mark`` was: what ``read`` gave since then (an interrupt before
        it joined the session) given again; not once damage or a retire moved the read."""
        with self._mutex:
            if cast(_Mark, mark)[0] == self._moved:
                (_, self._ri, self._roff, self._rcount, self._rbytes, self._frames, self._fi,
                 self.read_to, self.count, self.bytes) = cast(_Mark, mark)

    def head_time(self) -> float | None:
        """When the oldest message not read back was published (None: none, or unknown)."""
        with self._mutex:
            if self.count <= 0 or self._ri >= len(self._segs):
                return None
            if self._fill(self._segs[self._ri]):
                m = self._peek_message()
                return (m.accepted_at or None) if m is not None else None
            for seg in self._segs[self._ri + 1:]:
                for m in self._segment_messages(seg):
                    return m.accepted_at or None
            return None

    def tail_time(self) -> float | None:
        """When the newest message not read back was published (None: none, or unknown;
        the newest segment read once if sealed before this process)."""
        with self._mutex:
            if self.count <= 0 or not self._segs:
                return None
            if self._newest is None:  # (the newest segment may hold none: a failed append)
                seg = next((s for s in reversed(self._segs) if s.count), None)
                for m in self._segment_messages(seg) if seg is not None else ():
                    self._newest = m.accepted_at
            return self._newest or None

    def _segment_messages(self, seg: Segment) -> Iterator[OutgoingMessage]:
        payloads, _, _ = read_frames(self._read(seg.path, 0, seg.size))
        return self._messages(payloads[1:], seg.path)

    def read_all(self) -> list[OutgoingMessage]:
        """Every message not read back, without reading them back (``save_session``)."""
        out: list[OutgoingMessage] = []
        with self._mutex:
            for i in range(self._ri, len(self._segs)):
                seg = self._segs[i]
                if i == self._ri and self._roff:
                    data = self._read(seg.path, self._roff, seg.size)
                    out += self._messages(read_frames(data)[0], seg.path)
                else:
                    out += self._segment_messages(seg)
        return out

    # ------------------------------------------------------------------ retiring

    def retirable(self, spool_next: int) -> bool:
        """Whether a whole segment was read back below ``spool_next``."""
        with self._mutex:
            return bool(self._segs) and self._ri > 0 and self._segs[0].last < spool_next or (
                self.count == 0 and bool(self._segs) and self._segs[-1].last < spool_next
                and self._roff >= self._segs[-1].size)

    def retire(self, spool_next: int) -> int:
        """Delete the segments read back below ``spool_next`` (made durable); how many went."""
        gone = 0
        with self._mutex:
            while self._ri > 0 and self._segs[0].last < spool_next:
                self._unlink(self._segs.pop(0).path)
                self._ri -= 1
                gone += 1
            if (self.count == 0 and len(self._segs) == 1 and self._ri == 0
                    and self._roff >= self._segs[0].size and self._segs[0].last < spool_next):
                if self._wfd is not None:  # the open one, all read back: the next starts anew
                    self._close_fds()
                self._unlink(self._segs.pop().path)
                self._roff = self._rcount = self._rbytes = 0
                self._frames, self._fi = [], 0
                gone += 1
            self._moved += gone
        if gone:
            log.info("disk queue %s: %d segment(s) read back and deleted", self.dir, gone)
        return gone

    def _unlink(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._errors.append((exc.errno or -1, f"cannot delete {path}: {exc.strerror}"))

    # ------------------------------------------------------------------ the rest

    @property
    def has_errors(self) -> bool:
        """Whether ``take_errors`` has anything (no lock: a hint, checked once per action list)."""
        return bool(self._errors)

    def take_errors(self) -> list[tuple[int, str]]:
        """What went wrong without raising (a damaged segment, a failed delete)."""
        with self._mutex:
            errors, self._errors = self._errors, []
            return errors

    def keep_aside(self, label: str) -> list[str]:
        """The queue moved aside as ``P.queue.<label>-<time>`` (a mount point: its segments
        into ``P.queue/<label>-<time>``); the new names. ``PersistenceError``: left in place."""
        with self._mutex:
            self._close_fds()
            names = [n for n in os.listdir(self.dir) if OPEN_NAME.match(n)
                     or SEALED_NAME.match(n)] if os.path.isdir(self.dir) else []
            if names:
                aside = self._move_aside(label, names)
            self._segs, self._ri, self._roff, self._frames, self._fi = [], 0, 0, [], 0
            self.count, self.bytes, self.last_seq, self._newest = 0, 0, 0, None
            return [aside] if names else []

    def _move_aside(self, label: str, names: list[str]) -> str:
        stamp = time.strftime('%Y%m%dT%H%M%S')
        try:
            aside = free_name(f"{self.dir}.{label}-{stamp}")
            os.rename(self.dir, aside)
            return aside
        except OSError:  # (EBUSY: a mount point) its segments, within it
            pass
        inner = free_name(os.path.join(self.dir, f"{label}-{stamp}"))
        moved: list[str] = []
        try:
            os.mkdir(inner, 0o700)
            for name in names:
                os.rename(os.path.join(self.dir, name), os.path.join(inner, name))
                moved.append(name)
        except OSError as exc:
            with contextlib.suppress(OSError):  # (all of them back: left in place)
                for name in reversed(moved):
                    os.rename(os.path.join(inner, name), os.path.join(self.dir, name))
                os.rmdir(inner)
            raise PersistenceError(exc.errno, f"cannot keep the disk queue {self.dir} aside:"
                                              f" {exc.strerror or exc}") from exc
        return inner

    def _close_fds(self) -> None:
        self._map.drop()
        if self._wfd is not None:
            fd, self._wfd = self._wfd, None  # (forgotten first: an interrupt leaves no number)
            os.close(fd)

    def close(self) -> None:
        with self._mutex:
            self._close_fds()
