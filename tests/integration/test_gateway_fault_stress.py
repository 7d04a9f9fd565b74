"""A Gateway's sessions under random faults: ``publish_many`` threads and a ``publish_data``
thread a session, SessionSync=always, with failing fdatasyncs (EIO), writes (ENOSPC) and
fsyncs (EIO: the rewrites of the log), small session bounds and a small log bound
(compactions, rotations). After each round (every thread paused), memory and what a kill -9
would leave (``read_sessions`` of the directory) hold exactly what returned, in each
thread's order, nothing that raised, and nothing is left held.

One exception is the documented limit: a publish that raised whose message is still in the
log because the rewrite of its session that takes it back failed as well (README, "a failed
write or fsync"). It is allowed only for a session whose rewrite failed in that round, and
the session's next write must take it out. (Grown from the reproduction that found the
shared log's rebuild race of session 22; ``RV_SEED`` sets the seed of the faults, ``RV_ROUNDS``
the rounds.)"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from pathlib import Path

import pytest

from mqttsession import AsyncGateway, Client, Gateway
from mqttsession import journal as journal_mod
from mqttsession.sessionlog import SessionLog, read_sessions

try:  # tests/integration may or may not be a package
    from ._faults import FlakyOs, Outcomes, count_failed_rewrites, diff, only_raised_extra
except ImportError:  # pragma: no cover - rootdir-relative import
    from _faults import (FlakyOs, Outcomes, count_failed_rewrites,  # type: ignore[no-redef]
                         diff, only_raised_extra)

SESSIONS = 4
MANY = 2  # publish_many threads
ROUNDS = int(os.environ.get("RV_ROUNDS", "25"))
EACH = 6

MODES = {
    "sync": dict(fdatasync=0.25),
    "sync+write": dict(fdatasync=0.2, write=0.05),
    "all": dict(fdatasync=0.2, write=0.05, fsync=0.15),
}

Per = dict[tuple[str, int], list[bytes]]  # (publishing thread, session) -> payloads in order


@pytest.mark.parametrize("bound", [0, 600])
@pytest.mark.parametrize("mode", list(MODES))
def test_gateway_stress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str,
                        bound: int) -> None:
    seed = int(os.environ.get("RV_SEED", "0")) or random.randrange(1 << 30)
    flaky = FlakyOs(MODES[mode], random.Random(seed))
    flaky.enabled = False
    import threading as _th
    monkeypatch.setattr(_th, "excepthook", lambda a: None)
    rewrite_fails = count_failed_rewrites(monkeypatch, SessionLog)
    d = tmp_path / "gw"
    out = Outcomes()
    with Gateway(d) as gw:
        if bound:
            gw.store.max_log_bytes = 3000
        cs = [gw.client(f"s{k}", clean_session=False) for k in range(SESSIONS)]
        for c in cs:
            c.config("SessionSync=always")
            c.config("QueueInMemory=0")
            c.config(f"JournalMaxBytes={bound}")
            c.on_error = lambda e: None
        monkeypatch.setattr(os, "fdatasync", flaky.fdatasync)  # (the group commit's)
        monkeypatch.setattr(journal_mod, "os", flaky)
        flaky.enabled = True
        barrier = threading.Barrier(MANY + SESSIONS + 1)

        def many(t: str) -> None:
            for r in range(ROUNDS):
                for i in range(EACH):
                    msgs = [(cs[k], "t", 1 + (i + k) % 2, f"{t}-{k}-{r}-{i}".encode())
                            for k in range(SESSIONS)]
                    exc: BaseException | None = None
                    try:
                        gw.publish_many(msgs)
                    except Exception as e:  # noqa: BLE001
                        exc = e
                    out.batch([((t, k), m[3]) for k, m in enumerate(msgs)], exc)
                barrier.wait(120)
                barrier.wait(120)

        def single(k: int) -> None:
            t = f"q{k}"
            for r in range(ROUNDS):
                for i in range(EACH):
                    data = f"{t}-{k}-{r}-{i}".encode()
                    try:
                        cs[k].publish_data("t", 1 + i % 2, data)
                    except Exception as exc:  # noqa: BLE001
                        out.raised(exc, data)
                    else:
                        out.ok((t, k), data)
                barrier.wait(120)
                barrier.wait(120)

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
                flaky.enabled = False
                for c in cs:
                    c._lock.acquire()  # noqa: SLF001
                try:
                    problems += _check(r, cs, d, out, rewrite_fails)
                finally:
                    for c in reversed(cs):
                        c._lock.release()  # noqa: SLF001
                    flaky.enabled = True
                if problems:
                    break
                barrier.wait(120)
        finally:
            barrier.abort()
            for t in threads:
                t.join(20)
            flaky.enabled = False
        assert not any(t.is_alive() for t in threads), "stuck"
        assert not out.other, out.other[:5]
        assert not problems, (seed, problems[:3])
        assert out.failed


@pytest.mark.parametrize("mode", ["sync+write", "all"])
def test_async_gateway_stress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              mode: str) -> None:
    """The same through ``AsyncGateway``: ``publish_many`` tasks and a task a session that
    awaits ``AsyncSession.publish``, on one loop, the fdatasyncs in the gateway's sync
    thread."""
    seed = int(os.environ.get("RV_SEED", "0")) or random.randrange(1 << 30)
    flaky = FlakyOs(MODES[mode], random.Random(seed))
    flaky.enabled = False
    rewrite_fails = count_failed_rewrites(monkeypatch, SessionLog)
    d = tmp_path / "agw"
    out = Outcomes()
    problems: list[str] = []

    async def main() -> None:
        async with AsyncGateway(d) as gw:
            gw.store.max_log_bytes = 3000
            ss = [await gw.session(f"s{k}", session_sync="always", connect=False)
                  for k in range(SESSIONS)]
            for s in ss:
                await s.config("QueueInMemory=0")
                await s.config("JournalMaxBytes=600")
                s.client.on_error = lambda e: None

            async def many(t: str, r: int) -> None:
                for i in range(EACH):
                    msgs = [(ss[k], "t", 1 + (i + k) % 2, f"{t}-{k}-{r}-{i}".encode())
                            for k in range(SESSIONS)]
                    exc: BaseException | None = None
                    try:
                        await gw.publish_many(msgs)
                    except Exception as e:  # noqa: BLE001
                        exc = e
                    out.batch([((t, k), m[3]) for k, m in enumerate(msgs)], exc)

            async def single(k: int, r: int) -> None:
                t = f"q{k}"
                for i in range(EACH):
                    data = f"{t}-{k}-{r}-{i}".encode()
                    try:
                        await ss[k].publish("t", data, 1 + i % 2)
                    except Exception as exc:  # noqa: BLE001
                        out.raised(exc, data)
                    else:
                        out.ok((t, k), data)

            monkeypatch.setattr(os, "fdatasync", flaky.fdatasync)
            monkeypatch.setattr(journal_mod, "os", flaky)
            try:
                for r in range(ROUNDS):
                    flaky.enabled = True
                    await asyncio.gather(*[many(f"p{n}", r) for n in range(MANY)],
                                         *[single(k, r) for k in range(SESSIONS)])
                    flaky.enabled = False
                    for _ in range(1000):  # (a release deferred to the jobs thread, behind a
                        # take-back's rewrite holding the lock, sends what publish_many stored)
                        if not any(s.client._driver.releasing or s.client._driver.taking_back
                                   for s in ss):
                            break
                        await asyncio.sleep(0.01)
                    problems.extend(_check(r, [s.client for s in ss], d, out, rewrite_fails))
                    if problems:
                        break
            finally:
                flaky.enabled = False

    asyncio.run(main())
    assert not out.other, out.other[:5]
    assert not problems, (seed, problems[:3])
    assert out.failed


def _check(r: int, cs: list[Client], d: Path, out: Outcomes,
           rewrite_fails: list[tuple[str, str]]) -> list[str]:
    """Round ``r``'s problems (every publisher paused, faults off)."""

    def crash_copy() -> Per:
        stored = read_sessions(str(d))
        return _grouped({k: [m.payload for m in stored[f"s{k}"].outgoing.values()]
                         if f"s{k}" in stored else [] for k in range(SESSIONS)})

    held = [c.client_id for c in cs if c._driver.holds()]  # noqa: SLF001
    mem = _grouped({k: [m.message for m in cs[k].outgoing_messages] for k in range(SESSIONS)})
    crashed = crash_copy()
    want = out.want()
    rf = {cid for cid, _e in rewrite_fails}
    rewrite_fails.clear()
    problems = []
    if held:
        problems.append(f"round {r}: held {held}")
    if mem != want:
        problems.append(f"round {r}: memory != returned: {diff(mem, want, out.failed)}")
    wrong = _sessions_differing(crashed, want)
    if wrong and wrong <= rf and only_raised_extra(crashed, want, out.failed):
        for c in cs:  # the documented limit: the session's next write takes them out
            if c.client_id in wrong:
                c.save_session()
        crashed = crash_copy()
    if crashed != want:
        problems.append(f"round {r}: rewrites failed {sorted(rf)}; crash copy != returned:"
                        f" {diff(crashed, want, out.failed)}")
    return problems


def _grouped(per_session: dict[int, list[bytes]]) -> Per:
    out: Per = {}
    for k, msgs in per_session.items():
        for m in msgs:
            out.setdefault((m.split(b"-")[0].decode(), k), []).append(m)
    return out


def _sessions_differing(a: Per, b: Per) -> set[str]:
    return {f"s{k}" for (t, k) in {*a, *b} if a.get((t, k), []) != b.get((t, k), [])}

