"""The asyncio driving of a connection: a ``PahoConnection`` run from an event loop through
paho's public socket callbacks (``on_socket_open`` ...) and ``loop_read`` / ``loop_write`` /
``loop_misc``, as aiomqtt 2.x drives paho; no network thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Protocol

from paho.mqtt.enums import MQTTErrorCode

from .pacing import Pacer, jittered

if TYPE_CHECKING:
    from ._paho import PahoConnection

__all__ = ["AsyncioPump", "in_executor", "off_loop"]

log = logging.getLogger(__name__)

_OK = MQTTErrorCode.MQTT_ERR_SUCCESS
_LOCK_POLL = 0.001  # seconds between looks at a session lock another thread holds


class Guarded(Protocol):
    """The session a pump's connection belongs to, as far as its lock goes (the Driver)."""

    loop_waits: int  # the loop reads, or waits to (a disk-queue batch lets it in first)

    def lock_busy(self) -> bool: ...


def _no_remove(_sock: Any) -> bool:
    return False


class _Free:
    loop_waits = 0

    def lock_busy(self) -> bool:
        return False


class AsyncioPump:
    """Drives a ``PahoConnection`` from an asyncio loop instead of a network thread (paho's
    socket callbacks, as aiomqtt 2.x does): reads and writes when the socket is ready, timers
    (keep-alive, ``hooks._hook_tick``) every ``tick`` seconds, and reconnects with backoff.

    Everything but the blocking TCP connect (``reconnect``, in the loop's default executor)
    runs on the loop; socket callbacks from that executor are passed to the loop.
    """

    def __init__(self, conn: PahoConnection, loop: Any, delay_min: float, delay_max: float,
                 tick: float = 0.5, *, pacer: Pacer | None = None, jitter: bool = False,
                 loop_thread: threading.Thread | None = None,
                 executor: concurrent.futures.Executor | None = None) -> None:
        self.conn = conn
        self.loop = loop
        self._pacer = pacer  # many sessions: reconnect attempts take a slot of its rate
        self._jitter = jitter  # many sessions: backoff delays spread (``pacing.jittered``)
        self.executor = executor  # where the blocking reconnect waits (None: the loop's default)
        conn.loop_thread = loop_thread
        self._delay_min, self._delay_max = max(delay_min, 0.05), max(delay_max, delay_min)
        self._delay = self._delay_min
        self._tick = tick
        self._sock: Any = None
        self._writer: Any = None  # the socket the loop watches for writability (None: none)
        self._paused = False
        self._timer: Any = None
        self._retry: Any = None
        self.stopped = False
        conn.on_socket_open = self._on_open
        conn.on_socket_close = self._on_close
        conn.on_socket_register_write = self._on_want_write
        conn.on_socket_unregister_write = self._on_no_write
        self._wake_due = False  # a wake-up for packets queued by other threads is on its way
        conn.wake_writer = self._wake_writer
        # another thread holds the session's lock (a disk-queue batch's write and fdatasync):
        # the loop reads this socket once it is free, not waiting for it (``_read``)
        self.session: Guarded = _Free()
        self._lock_retry: Any = None

    def _soon(self, fn: Callable[[], None]) -> None:
        if self.loop.is_closed():
            return
        try:
            running = self.loop is asyncio.get_running_loop()
        except RuntimeError:
            running = False
        if running:
            fn()
        else:
            self.loop.call_soon_threadsafe(fn)

    def _on_open(self, _c: Any, _u: Any, sock: Any) -> None:
        def opened() -> None:
            if self.stopped or sock.fileno() < 0:  # (closed meanwhile by another thread)
                return
            self._sock = sock
            if not self._paused:
                try:
                    self.loop.add_reader(sock, self._read)
                except (ValueError, OSError):  # (closed just now: its close callback follows)
                    self._sock = None
                    return
            self._schedule_misc()
        self._soon(opened)

    def _on_close(self, _c: Any, _u: Any, sock: Any) -> None:
        def closed() -> None:
            self._unwatch(sock)
            if self._writer is sock:
                self._writer = None
            if self._sock is sock:
                self._sock = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not self.stopped and self.conn.wants_reconnect():
                self._schedule_reconnect()
        self._soon(closed)

    def _unwatch(self, sock: Any, writer: bool = True) -> None:
        """The loop stops watching ``sock``, also once another thread closed it (paho's
        close from a ``disconnect()`` off the loop, or a TCP connect's thread): asyncio's
        public calls refuse its fd -1, its selector finds it by the object."""
        for name in ("remove_writer", "remove_reader") if writer else ("remove_reader",):
            try:
                getattr(self.loop, name)(sock)
            except (ValueError, OSError):  # (its fd -1; or EBADF from the selector's modify,
                with contextlib.suppress(OSError, KeyError, ValueError):  # which forgot it)
                    getattr(self.loop, "_" + name, _no_remove)(sock)

    def _on_want_write(self, _c: Any, _u: Any, sock: Any) -> None:
        def want() -> None:  # (not a socket closed meanwhile: a DISCONNECT written, closed)
            if not self.stopped and sock is self._sock and sock.fileno() != -1:
                self.loop.add_writer(sock, self._write)
                self._writer = sock
        self._soon(want)

    def _on_no_write(self, _c: Any, _u: Any, sock: Any) -> None:
        # paho says so after every write; asyncio's remove_writer of a socket it does not
        # watch builds a KeyError with the socket's repr (a getpeername call): only when one is
        def no_write() -> None:
            if self._writer is sock:
                self._writer = None
                self.loop.remove_writer(sock)
        self._soon(no_write)

    def _wake_writer(self) -> None:
        """Another thread queued a packet: one loop round writes all queued by then."""
        if self._wake_due:
            return
        self._wake_due = True
        try:
            self.loop.call_soon_threadsafe(self._write_queued)
        except RuntimeError:  # the loop is closed: nothing is written any more
            pass

    def _write_queued(self) -> None:
        self._wake_due = False  # first: a packet queued from here on wakes the loop again
        if self._sock is not None and not self.stopped:
            self.conn.loop_write()

    def _read(self) -> None:
        if self._sock is None or self.stopped:
            return
        s = self.session
        s.loop_waits += 1  # (a batch about to take the lock lets this read in first)
        try:
            if self._lock_retry is None and not s.lock_busy():
                self.conn.loop_read()
                return
            self._unwatch(self._sock, writer=False)  # (until the lock is free: the loop
            if self._lock_retry is None:  # runs the other sessions meanwhile)
                self._lock_retry = self.loop.call_later(_LOCK_POLL, self._after_lock)
                s.loop_waits += 1  # (until ``_after_lock`` ends the wait)
        finally:
            s.loop_waits -= 1

    def _after_lock(self) -> None:
        if not self.stopped and self._sock is not None and self.session.lock_busy():
            self._lock_retry = self.loop.call_later(_LOCK_POLL, self._after_lock)
            return
        self._lock_retry = None
        self.session.loop_waits -= 1
        if not self.stopped and self._sock is not None and not self._paused:
            self.loop.add_reader(self._sock, self._read)
            self._read()

    def _write(self) -> None:
        self.conn.loop_write()

    def _schedule_misc(self) -> None:
        self._timer = self.loop.call_later(self._tick, self._misc)

    def _misc(self) -> None:
        self._timer = None
        if self.stopped or self._sock is None:
            return
        s = self.session
        if s.lock_busy():  # (as ``_read``: soon, once the lock is free)
            self._timer = self.loop.call_later(_LOCK_POLL, self._misc)
            return
        s.loop_waits += 1
        try:
            rc = self.conn.loop_misc()
        finally:
            s.loop_waits -= 1
        if rc == _OK and self._sock is not None:
            self._schedule_misc()

    def set_delays(self, delay_min: float, delay_max: float) -> None:
        """ReconnectDelayMin / Max set while this connection runs (a wait under way ends as it
        was)."""
        self._delay_min, self._delay_max = max(delay_min, 0.05), max(delay_max, delay_min)
        self._delay = min(max(self._delay, self._delay_min), self._delay_max)

    def accepted(self) -> None:
        """A CONNACK accepted the connection: the next backoff starts at the minimum (a
        server that takes the TCP connection but never answers leaves it growing)."""
        self._delay = self._delay_min

    def _schedule_reconnect(self) -> None:
        delay, self._delay = self._delay, min(self._delay * 2, self._delay_max)
        if self._jitter:
            delay = jittered(delay)
        self._retry = self.loop.call_later(delay, self._paced)

    def _paced(self) -> None:
        """A backoff ended: the pacer's slot taken now, in the order the waits end (taken
        ahead at the end's time, a session due sooner queued behind one due later, and
        sessions cut off together came back together, at the longest wait)."""
        self._retry = None
        wait = self._pacer.delay(self.loop.time()) if self._pacer is not None else 0.0
        if wait > 0:
            self._retry = self.loop.call_later(wait, self._reconnect)
        else:
            self._reconnect()

    def _reconnect(self) -> None:
        self._retry = None
        if self.stopped or not self.conn.wants_reconnect():  # (AutoReconnect=False set since)
            return
        fut = self.loop.run_in_executor(self.executor, self.conn.reconnect)

        def done(f: Any) -> None:
            if f.cancelled() or f.exception() is None or self.stopped \
                    or not self.conn.wants_reconnect():
                return
            log.debug("reconnect failed: %s", f.exception())
            self._schedule_reconnect()
        fut.add_done_callback(done)

    def pause_reading(self) -> None:
        """Read nothing more until ``resume_reading`` (back-pressure)."""
        if not self._paused:
            self._paused = self.conn.reading_paused = True
            if self._sock is not None:
                self._unwatch(self._sock, writer=False)

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = self.conn.reading_paused = False
            if self._sock is not None and not self.stopped:
                self.loop.add_reader(self._sock, self._read)
                self.loop.call_soon(self._read)  # what was read into buffers (TLS) before

    def call(self, fn: Callable[[], None], timeout: float = 10.0) -> None:
        """``fn()`` on the loop: now when called there (or the loop is not running), else
        passed to it and waited for (its exception is raised here)."""
        try:
            here = self.loop is asyncio.get_running_loop()
        except RuntimeError:
            here = False
        if here or self.loop.is_closed() or not self.loop.is_running():
            fn()
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                done.set_exception(exc)
            else:
                done.set_result(None)
        self.loop.call_soon_threadsafe(run)
        done.result(timeout)

    def stop(self) -> None:
        """No more reads, writes, timers or reconnects (the socket itself is paho's)."""
        self.stopped = True
        if self._lock_retry is not None:  # (its wait ends here)
            self._lock_retry.cancel()
            self._lock_retry = None
            self.session.loop_waits -= 1
        for handle in (self._timer, self._retry):
            if handle is not None:
                handle.cancel()
        if self._sock is not None:
            self._unwatch(self._sock)


def in_executor(loop: asyncio.AbstractEventLoop, executor: concurrent.futures.Executor | None,
                call: Callable[[], None]) -> asyncio.Future[None]:
    """On the loop: ``call`` run in ``executor`` (None: the loop's default); here, its future
    done, once that is shut down (the loop ending: ``asyncio.run`` returned without a
    ``close()``), never ``RuntimeError`` out of a done callback."""
    try:
        return loop.run_in_executor(executor, call)
    except RuntimeError:
        done: asyncio.Future[None] = loop.create_future()
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - the future's, for whoever awaits it
            done.set_exception(exc)
        else:
            done.set_result(None)
        return done


def off_loop(loop: asyncio.AbstractEventLoop, executor: concurrent.futures.Executor | None,
             job: Callable[[], None]) -> None:
    """Run ``job`` (it reports its own failures) in ``executor`` (None: the loop's default),
    asked from any thread; dropped once the loop or the executor is closed (a session ending:
    what it did is done again after a restart)."""
    def start() -> None:
        try:
            loop.run_in_executor(executor, job)
        except RuntimeError:  # (the executor shut down)
            log.debug("a job for after the loop's end was dropped")

    try:
        loop.call_soon_threadsafe(start)
    except RuntimeError:  # (the loop closed)
        log.debug("a job for after the loop's end was dropped")
