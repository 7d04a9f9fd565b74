"""Publishers in several threads taking turns (flat combining) under SessionSync=always: one
publisher runs the queued publishes of the others, makes their records durable with one
fdatasync and writes their PUBLISHes, while the others sleep. One ``Turns`` serves the
publishers of one ``Client``. (A ``Gateway``'s sessions do not share one: there each thread
publishes through sessions of its own, whose locks never meet, and the store's group commit
already shares the fdatasyncs; turns made that slower, bench_gateway: always / none 0.40-0.52
against 0.64.)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Protocol, TypeVar

from .errors import PersistenceError

__all__ = ["Turns", "run_batch"]

_T = TypeVar("_T")
Token = tuple[int, int, int]  # a held publish: its seq, and where its record ends
_POLL = 0.00005  # seconds between looks at the queue while a turn gathers


class _Owner(Protocol):
    """A session's side of a turn (``durability.Durability``)."""

    lock: threading.RLock

    def sync_time(self) -> float: ...

    def wait_durable(self, token: Token, release: bool = False) -> Exception | None: ...

    def holds(self) -> bool: ...

    def release_durable(self) -> None: ...

    def release_quietly(self, token: Token, err: Exception | None) -> None: ...

    def release(self, token: Token, err: Exception | None) -> None: ...

    def awaits(self, token: Token) -> bool: ...

    def finish(self, later: list[Any]) -> None: ...


class _Request:
    """A publish waiting for a turn: its session, its locked part, then what it gave."""

    __slots__ = ("owner", "fn", "result", "error", "done", "orphan", "wake")

    def __init__(self, owner: _Owner, fn: Callable[[], tuple[object, Token | None]]) -> None:
        self.owner, self.fn = owner, fn
        self.result: tuple[object, Token | None] | None = None
        self.error: Exception | None = None
        self.done = False
        self.orphan = False  # its publisher was interrupted (KeyboardInterrupt) while it ran
        self.wake = threading.Lock()  # released: done, or the turn is this one's
        self.wake.acquire()

    def signal(self) -> None:
        try:
            self.wake.release()
        except RuntimeError:  # woken already: it looks at ``done`` when it runs
            pass


class Turns:
    """The queue of publishes and whose turn it is; ``publishers`` counts the ``publish_data``
    calls under way (turns are taken while there are more than one)."""

    def __init__(self) -> None:
        self.publishers = 0
        self.count_lock = threading.Lock()
        self._queue: deque[_Request] = deque()
        self._turn = threading.Lock()
        self._holder = 0  # the thread whose turn it is (``threading.get_ident``), 0: none

    def run(self, owner: _Owner, fn: Callable[[], tuple[_T, Token | None]]
            ) -> tuple[_T, Token | None]:
        """``fn``, the locked part of one publish, joins the queue; the thread whose turn it is
        runs every queued ``fn`` under one hold of each session's lock, makes their records
        durable with one fdatasync and writes their PUBLISHes together; the others sleep
        meanwhile (no convoy at the lock, one wake-up each). Returns ``fn``'s result, or
        raises its error; the caller then ``settle``s the token (at once when synced)."""
        if self._holder == threading.get_ident():
            # a callback the turn runs (``finish``: on_error, on_message_dropped) publishes:
            # alone, its caller syncs it (queued, it would wait for this very turn)
            with owner.lock:
                return fn()
        req = _Request(owner, fn)
        queue = self._queue
        queue.append(req)
        try:
            while not req.done:
                if not self._turn.acquire(False):
                    req.wake.acquire()  # done, or the turn was handed to this one
                    continue
                batch: list[_Request] = []
                self._holder = threading.get_ident()
                try:
                    self._gather(owner)
                    while queue:
                        batch.append(queue.popleft())
                    self._sync(self._run(batch))
                finally:
                    self._holder = 0
                    self._turn.release()
                    for r in batch:
                        self._done(r)
                    if queue:  # queued while this one ran: the turn goes to the first of
                        queue[0].signal()  # them (also when this one was interrupted)
        except BaseException:
            try:
                queue.remove(req)  # not run: nothing to take back
            except ValueError:
                req.orphan = True  # run, or running: released once durable, else taken back
                if req.done:
                    self._done(req)
            raise
        if req.error is not None:
            raise req.error
        return req.result  # type: ignore[return-value]

    def _gather(self, owner: _Owner) -> None:
        """A turn waits for the publishers the last one released to queue again, so that its
        fdatasync covers every publish under way: half an fdatasync at the longest."""
        queue = self._queue
        if len(queue) >= self.publishers:
            return
        deadline = time.monotonic() + owner.sync_time() / 2
        while len(queue) < self.publishers and time.monotonic() < deadline:
            time.sleep(_POLL)

    @staticmethod
    def _run(batch: list[_Request]) -> list[tuple[_Owner, Token]]:
        """The locked parts of a turn's batch, in order, under one hold of each session's
        lock; each session's last token, the one whose record was written last first (the
        ``_Owner`` protocol allows several sessions over one store)."""
        last: dict[_Owner, Token] = {}
        i = 0
        while i < len(batch):
            owner = batch[i].owner
            with owner.lock:
                while i < len(batch) and batch[i].owner is owner:
                    r = batch[i]
                    i += 1
                    try:
                        r.result = result = r.fn()
                    except Exception as exc:  # raised in its own thread
                        r.error = exc
                        continue
                    if result[1] is not None:
                        last.pop(owner, None)
                        last[owner] = result[1]
        return list(reversed(last.items()))

    @staticmethod
    def _sync(last: list[tuple[_Owner, Token]]) -> None:
        """One fdatasync for the batch (the last record's covers the ones before it, in one
        file); each session then writes its PUBLISHes. No linger: the batch is whole, and the
        next gathers during this fdatasync. A failure is each publisher's to find."""
        for owner, token in last:
            if owner.wait_durable(token, release=True) is None \
                    and owner.holds():  # another thread's fdatasync covered them
                owner.release_durable()

    @staticmethod
    def _done(r: _Request) -> None:
        """``r`` has run (and synced): its publisher may go on (an interrupted one's message
        is released if durable, else taken back). One that never ran (the turn's thread was
        interrupted first) raises ``PersistenceError``: its message is not in the session."""
        if r.result is None and r.error is None:
            r.error = PersistenceError(None, "not published: the thread whose turn ran this"
                                             " publish was interrupted first")
        r.done = True
        if r.orphan and r.result is not None and r.result[1] is not None:
            r.owner.release_quietly(r.result[1], None)
        r.signal()


def run_batch(batch: list[_Request]) -> None:
    """One thread's publishes to several sessions over one store (``Gateway.publish_many``):
    each session's locked parts in order under one hold of its lock, then ONE fdatasync for
    all of their records (the first session's sync covers the others', in the same file) and
    each session's PUBLISHes. Sets each request's ``result`` or ``error``: a failed sync
    takes its session's messages back and is their error, as is another thread's failed
    sync that cut a record of the batch before its session's sync ran. Interrupted (KeyboardInterrupt)
    before its session's sync ran, each held message is released if durable, else taken
    back: none is left held."""
    errs: dict[_Owner, Exception | None] = {}
    try:
        for owner, token in Turns._run(batch):
            err = errs[owner] = owner.wait_durable(token, release=True)
            if err is None and owner.holds():  # another thread's fdatasync covered them
                owner.release_durable()
    finally:
        for r in batch:
            held = r.result[1] if r.result is not None else None
            if held is None:
                continue
            if r.owner not in errs:  # interrupted first: never left held
                r.owner.release_quietly(held, None)
                continue
            if not r.owner.awaits(held):
                continue  # released by its session's sync
            # covered by that sync, unless another thread's failed sync cut it meanwhile
            err = errs[r.owner] or r.owner.wait_durable(held)
            try:
                r.owner.release(held, err)  # raises ``err``, its message taken back
            except Exception as exc:  # this one's to report
                r.error = exc
