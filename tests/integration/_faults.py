"""What the fault stress tests share: an ``os`` whose fdatasync, fsync, write and ftruncate
fail at random (seeded), what each publish came to, and a readable difference of two
per-publisher message lists."""

from __future__ import annotations

import errno
import os
import random
import threading
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import pytest

from mqttsession import PublishManyError
from mqttsession import store as store_mod
from mqttsession.errors import PersistenceError
from mqttsession.testing.faults import FakeOs

__all__ = ["FailOnce", "FlakyOs", "Outcomes", "StuckThenEIO", "count_failed_rewrites", "diff", "only_raised_extra"]

_REAL_FDATASYNC = os.fdatasync


class FlakyOs(FakeOs):
    """``FakeOs`` (``mqttsession.journal``'s ``os``) whose fdatasync, fsync, write and
    ftruncate fail at random: each call of a name in ``probs`` with that probability while
    ``enabled``."""

    def __init__(self, probs: Mapping[str, float], rnd: random.Random) -> None:
        super().__init__()
        self.probs = dict(probs)
        self.rnd = rnd
        self.enabled = True
        self._lock = threading.Lock()

    def fail(self, what: str) -> bool:
        """Whether this call of ``what`` fails (the seeded draw)."""
        p = self.probs.get(what, 0)
        if not p or not self.enabled:
            return False
        with self._lock:
            return self.rnd.random() < p

    def fdatasync(self, fd: int) -> None:
        if self.fail("fdatasync"):
            raise OSError(errno.EIO, "injected EIO")
        _REAL_FDATASYNC(fd)

    def fsync(self, fd: int) -> None:
        if self.fail("fsync"):
            raise OSError(errno.EIO, "injected EIO fsync")
        os.fsync(fd)

    def write(self, fd: int, data: Any) -> int:
        if self.fail("write"):
            raise OSError(errno.ENOSPC, "injected ENOSPC")
        return os.write(fd, data)

    def ftruncate(self, fd: int, n: int) -> None:
        if self.fail("ftruncate"):
            raise OSError(errno.EIO, "injected ftruncate")
        os.ftruncate(fd, n)


class FailOnce:
    """A module's ``os``: once ``armed``, the next fdatasync fails with EIO; every other call
    is the real one."""

    armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            self.armed = False
            raise OSError(errno.EIO, "Input/output error (injected)")
        _REAL_FDATASYNC(fd)


class StuckThenEIO:
    """A module's ``os`` (``journal``'s, ``groupcommit``'s): once ``armed``, the next
    fdatasync waits for ``gate`` (``entered`` set meanwhile), then fails with EIO; every other
    call is the real one."""

    def __init__(self) -> None:
        self.armed = False
        self.entered, self.gate = threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            self.armed = False
            self.entered.set()
            self.gate.wait(10)
            raise OSError(errno.EIO, "Input/output error (injected)")
        _REAL_FDATASYNC(fd)


class Outcomes:
    """What returned (per publisher, in order) and what raised; ``other``: errors that are
    not a ``PersistenceError`` (none is expected)."""

    def __init__(self) -> None:
        self.returned: dict[Hashable, list[bytes]] = {}
        self.failed: set[bytes] = set()
        self.other: list[str] = []

    def ok(self, key: Hashable, data: bytes) -> None:
        self.returned.setdefault(key, []).append(data)

    def raised(self, exc: BaseException, *data: bytes) -> None:
        if not isinstance(exc, PersistenceError):
            self.other.append(repr(exc))
        self.failed.update(data)

    def batch(self, sent: Sequence[tuple[Hashable, bytes]], exc: BaseException | None) -> None:
        """A ``publish_many`` of ``sent`` (key, data) that raised ``exc`` (None: returned)."""
        for i, (key, data) in enumerate(sent):
            if exc is None or (isinstance(exc, PublishManyError) and i not in exc.errors):
                self.ok(key, data)
            else:
                self.raised(exc.errors[i] if isinstance(exc, PublishManyError) else exc, data)

    def want(self) -> dict[Hashable, list[bytes]]:
        """What returned, publishers that stored nothing left out."""
        return {k: v for k, v in self.returned.items() if v}


def count_failed_rewrites(monkeypatch: pytest.MonkeyPatch, store: type
                          ) -> list[tuple[str, str]]:
    """(client id, error) of each ``StateFile.rewrite`` whose last try failed: the last
    ``store.compact`` it called raised (``store``: ``Journal`` or ``SessionLog``)."""
    fails: list[tuple[str, str]] = []
    inside = threading.local()
    orig_rw, orig_compact = store_mod.StateFile.rewrite, store.compact

    def rw(self: Any, state: Any) -> None:
        inside.on, inside.last = True, None
        try:
            orig_rw(self, state)
        finally:
            inside.on = False
            if inside.last is not None:
                fails.append((state.client_id, inside.last))

    def compact(self: Any, state: Any, *args: Any) -> None:
        try:
            orig_compact(self, state, *args)
        except Exception as exc:
            if getattr(inside, "on", False):
                inside.last = str(exc)
            raise
        if getattr(inside, "on", False):
            inside.last = None

    monkeypatch.setattr(store_mod.StateFile, "rewrite", rw)
    monkeypatch.setattr(store, "compact", compact)
    return fails


def only_raised_extra(crashed: Mapping[Hashable, list[bytes]],
                      want: Mapping[Hashable, list[bytes]], failed: set[bytes]) -> bool:
    """Whether all a crash copy holds beyond what returned are publishes that raised, and it
    misses nothing that returned."""
    extra = [m for key, v in crashed.items() for m in v if m not in want.get(key, [])]
    missing = [m for key, v in want.items() for m in v if m not in crashed.get(key, [])]
    return not missing and all(m in failed for m in extra)


def diff(a: Mapping[Hashable, list[bytes]], b: Mapping[Hashable, list[bytes]],
         failed: set[bytes] | frozenset[bytes] = frozenset()) -> str:
    """Per publisher: what ``a`` holds that ``b`` does not (and whether its publish raised),
    what it misses, and whether the common messages keep their order."""
    out = []
    for k in sorted(set(a) | set(b), key=repr):
        x, y = a.get(k, []), b.get(k, [])
        if x != y:
            extra = [m for m in x if m not in y]
            missing = [m for m in y if m not in x]
            out.append(f"{k}: extra {extra[:5]} (raised: {[m in failed for m in extra[:5]]})"
                       f" missing {missing[:5]}"
                       f" order_ok={[m for m in x if m in y] == [m for m in y if m in x]}")
    return "; ".join(out)
