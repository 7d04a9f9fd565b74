"""A reproduction of an open defect (not collected by ``python3 -m pytest``; run it by name:
``python3 -m pytest tests/repro/gateway_fault_stress.py``).

A Gateway's sessions: publish_many threads plus publish_data threads, with random fdatasync
(EIO) / write (ENOSPC) / fsync (EIO) faults, small session bounds and a small log bound
(rotations). After each round: memory and a crash copy (read_sessions) hold exactly what
returned, in per-thread order, nothing that raised; nothing left held.

Session 21 found ``read_sessions`` raising ``StateError`` ("record N: accepted seq S+1,
expected S") about one run in four; session 22 found the cause (a failed sync in another
thread cut the log between a writer's look at its session and the rebuild that writer ran:
the record was written after the rebuild, following a snapshot without the record before it)
and fixed it (``test_a_cut_the_rebuild_settles_is_not_followed_by_the_record``); 0 in 26 runs
since. Still open: about one run in thirty (mode ``all``, bound 600) a message whose publish
raised is in the crash copy, in a round where a rewrite (``StateFile.rewrite``, best effort)
failed, though for another session than the message's: whether this is only the documented
best-effort limit is not yet known.
(Written by the review of session 21's fix; RV_SEED and RV_ROUNDS rerun a case.)"""

from __future__ import annotations

import errno
import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from mqttsession import Gateway, PublishManyError
from mqttsession import journal as journal_mod
from mqttsession.errors import PersistenceError
from mqttsession.sessionlog import read_sessions

SESSIONS = 4
MANY = 2  # publish_many threads
ROUNDS = int(os.environ.get("RV_ROUNDS", "25"))
EACH = 6

MODES = {
    "sync": dict(fdatasync=0.25),
    "sync+write": dict(fdatasync=0.2, write=0.05),
    "all": dict(fdatasync=0.2, write=0.05, fsync=0.15),
}


@pytest.mark.parametrize("bound", [0, 600])
@pytest.mark.parametrize("mode", list(MODES))
def test_gateway_stress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str,
                        bound: int) -> None:
    seed = int(os.environ.get("RV_SEED", "0")) or random.randrange(1 << 30)
    rnd = random.Random(seed)
    probs = MODES[mode]
    rlock = threading.Lock()
    enabled = [False]
    import threading as _th
    monkeypatch.setattr(_th, "excepthook", lambda a: None)

    def fail(what: str) -> bool:
        p = probs.get(what, 0)
        if not p or not enabled[0]:
            return False
        with rlock:
            return rnd.random() < p

    real_fdatasync, real_fsync, real_write = os.fdatasync, os.fsync, os.write

    def fdatasync(fd: int) -> None:
        if fail("fdatasync"):
            raise OSError(errno.EIO, "injected EIO")
        real_fdatasync(fd)

    class _Flaky:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def fsync(self, fd: int) -> None:
            if fail("fsync"):
                raise OSError(errno.EIO, "injected EIO fsync")
            real_fsync(fd)

        def write(self, fd: int, data: Any) -> int:
            if fail("write"):
                raise OSError(errno.ENOSPC, "injected ENOSPC")
            return real_write(fd, data)

        def fdatasync(self, fd: int) -> None:
            fdatasync(fd)

    from mqttsession import store as store_mod
    from mqttsession.sessionlog import SessionLog
    rewrite_fails: list[str] = []
    tl = threading.local()
    orig_rw = store_mod.StateFile.rewrite
    orig_compact = SessionLog.compact

    def rw(self: Any, state: Any) -> None:
        tl.on = True
        try:
            orig_rw(self, state)
        finally:
            tl.on = False

    def compact(self: Any, state: Any, text: Any = None) -> None:
        try:
            orig_compact(self, state, text)
        except Exception as exc:
            if getattr(tl, "on", False):
                rewrite_fails.append(f"{self.client_id}: {exc}")
            raise

    monkeypatch.setattr(store_mod.StateFile, "rewrite", rw)
    monkeypatch.setattr(SessionLog, "compact", compact)
    d = tmp_path / "gw"
    with Gateway(d) as gw:
        if bound:
            gw.store.max_log_bytes = 3000
        cs = [gw.client(f"s{k}", clean_session=False) for k in range(SESSIONS)]
        for c in cs:
            c.config("SessionSync=always")
            c.config("QueueInMemory=0")
            c.config(f"JournalMaxBytes={bound}")
            c.on_error = lambda e: None
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        monkeypatch.setattr(journal_mod, "os", _Flaky())
        enabled[0] = True
        # returned[(thread, session)] = payloads in order
        returned: dict[tuple[str, int], list[bytes]] = {}
        failed: set[bytes] = set()
        other: list[str] = []
        nthreads = MANY + SESSIONS
        barrier = threading.Barrier(nthreads + 1)

        def ok(t: str, k: int, data: bytes) -> None:
            returned.setdefault((t, k), []).append(data)

        def many(t: str) -> None:
            for r in range(ROUNDS):
                for i in range(EACH):
                    ks = list(range(SESSIONS))
                    msgs = [(cs[k], "t", 1 + (i + k) % 2, f"{t}-{k}-{r}-{i}".encode())
                            for k in ks]
                    try:
                        gw.publish_many(msgs)
                    except PublishManyError as exc:
                        for j, (c, _t, _q, data) in enumerate(msgs):
                            if j in exc.errors:
                                if not isinstance(exc.errors[j], PersistenceError):
                                    other.append(repr(exc.errors[j]))
                                failed.add(data)
                            else:
                                ok(t, ks[j], data)
                    except Exception as exc:  # noqa: BLE001
                        other.append(repr(exc))
                        for m in msgs:
                            failed.add(m[3])
                    else:
                        for j, m in enumerate(msgs):
                            ok(t, ks[j], m[3])
                barrier.wait(120)
                barrier.wait(120)

        def single(k: int) -> None:
            t = f"q{k}"
            for r in range(ROUNDS):
                for i in range(EACH):
                    data = f"{t}-{k}-{r}-{i}".encode()
                    try:
                        cs[k].publish_data("t", 1 + i % 2, data)
                    except PersistenceError:
                        failed.add(data)
                    except Exception as exc:  # noqa: BLE001
                        other.append(repr(exc))
                        failed.add(data)
                    else:
                        ok(t, k, data)
                barrier.wait(120)
                barrier.wait(120)

        def grouped(per_session: dict[int, list[bytes]]) -> dict[tuple[str, int], list[bytes]]:
            out: dict[tuple[str, int], list[bytes]] = {}
            for k, msgs in per_session.items():
                for m in msgs:
                    t = m.split(b"-")[0].decode()
                    out.setdefault((t, k), []).append(m)
            return out

        def norm(x: dict[tuple[str, int], list[bytes]]) -> dict[tuple[str, int], list[bytes]]:
            return {k: v for k, v in x.items() if v}

        threads = [threading.Thread(target=many, args=(f"p{n}",), daemon=True)
                   for n in range(MANY)]
        threads += [threading.Thread(target=single, args=(k,), daemon=True)
                    for k in range(SESSIONS)]
        for t in threads:
            t.start()
        problems: list[str] = []
        try:
            for r in range(ROUNDS):
                barrier.wait(120)
                enabled[0] = False
                for c in cs:
                    c._lock.acquire()  # noqa: SLF001
                try:
                    held = [c.client_id for c in cs if c._driver.holds()]  # noqa: SLF001
                    mem = norm(grouped({k: [m.message for m in cs[k].outgoing_messages]
                                        for k in range(SESSIONS)}))
                    stored = read_sessions(str(d))
                    crashed = norm(grouped({k: [m.payload for m in stored[f"s{k}"].outgoing.values()]
                                            if f"s{k}" in stored else [] for k in range(SESSIONS)}))
                finally:
                    for c in reversed(cs):
                        c._lock.release()  # noqa: SLF001
                    enabled[0] = True
                want = norm(returned)
                rf = list(rewrite_fails)
                rewrite_fails.clear()
                if held:
                    problems.append(f"round {r}: held {held}")
                if mem != want:
                    problems.append(f"round {r}: memory != returned: {_diff(mem, want, failed)}")
                if crashed != want:
                    problems.append(f"round {r}: rewrite fails {rf}; crash != returned: {_diff(crashed, want, failed)}")
                if problems:
                    break
                barrier.wait(120)
        finally:
            barrier.abort()
            for t in threads:
                t.join(20)
            enabled[0] = False
            monkeypatch.setattr(os, "fdatasync", real_fdatasync)
            monkeypatch.setattr(journal_mod, "os", os)
        assert not any(t.is_alive() for t in threads), "stuck"
        assert not other, other[:5]
        assert not problems, (seed, problems[:3])
        assert failed


def _diff(a: dict[Any, list[bytes]], b: dict[Any, list[bytes]], failed: set[bytes]) -> str:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k, []), b.get(k, [])
        if x != y:
            extra = [m for m in x if m not in y]
            missing = [m for m in y if m not in x]
            out.append(f"{k}: extra {extra[:4]} (raised: {[m in failed for m in extra[:4]]})"
                       f" missing {missing[:4]}"
                       f" order_ok={[m for m in x if m in y] == [m for m in y if m in x]}")
    return "; ".join(out)
