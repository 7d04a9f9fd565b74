"""An amqtt broker embedded in this process (its own event loop thread), for tests.

Part of ``mqttsession.testing.brokers`` (which re-exports it): needs the ``amqtt`` package.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TypeVar

from .brokers import (
    LOCALHOST,
    BrokerStartError,
    _tail,
    _yaml,
    load_template,
    render_template,
)

__all__ = ["EmbeddedAmqtt"]

logger = logging.getLogger("mqttsession.testing.brokers")

_EA = TypeVar("_EA", bound="EmbeddedAmqtt")


class _ThreadLogHandler(logging.Handler):
    """Keep the formatted records emitted from one thread (the embedded broker's loop)."""

    def __init__(self, maxlen: int = 50_000) -> None:
        super().__init__(logging.NOTSET)
        self.thread_id: int | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=maxlen)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if self.thread_id is not None and record.thread != self.thread_id:
            return
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - a logging handler must not raise
            self.handleError(record)


class EmbeddedAmqtt:
    """amqtt in this process: an asyncio loop in a daemon thread runs ``amqtt.broker.Broker``.

    :param conf_template: a template name in ``broker_conf/`` or a path (default ``amqtt.yaml``);
        ``{port}`` is replaced by ``port``.
    :param config: a complete amqtt configuration dict to use instead of the template.
    :param port: 0 (default) binds a free port, read back from the listener socket.
    :param log_level: if given, lower the ``amqtt`` logger to this level (it is a process-wide
        logger) so that :meth:`log_text` sees e.g. DEBUG packet logs. Default: leave it alone.

    ``pid`` is this process's pid. ``kill()`` is the same as ``stop()``: an in-process broker cannot be
    SIGKILLed, and amqtt forgets all sessions on every start anyway.
    """

    kind = "amqtt-embedded"

    def __init__(
        self,
        conf_template: str | os.PathLike[str] = "amqtt.yaml",
        *,
        config: Mapping[str, Any] | None = None,
        port: int = 0,
        log_level: int | None = None,
        startup_timeout: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.conf_template = conf_template
        self.config = dict(config) if config is not None else None
        self._requested_port = port
        self._port: int | None = None
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None
        self._lock = threading.RLock()
        self._log = _ThreadLogHandler()

    # -- properties --------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("embedded amqtt broker not started yet")
        return self._port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def running(self) -> bool:
        return self._broker is not None

    @property
    def broker(self) -> Any:
        """The ``amqtt.broker.Broker`` (only touch it from its loop: :meth:`call`)."""
        return self._broker

    def log_text(self) -> str:
        """amqtt log records emitted by this broker's loop thread, across restarts."""
        return "\n".join(self._log.lines) + ("\n" if self._log.lines else "")

    def describe(self) -> str:
        port = self._port if self._port is not None else "?"
        return f"{self.kind} {LOCALHOST}:{port}"

    def __repr__(self) -> str:
        return f"<EmbeddedAmqtt {self.describe()} running={self.running}>"

    # -- configuration -----------------------------------------------------------------------
    def _build_config(self, port: int) -> dict[str, Any]:
        if self.config is not None:
            return dict(self.config)
        text, _origin = load_template(self.conf_template)
        config: dict[str, Any] = _yaml().safe_load(render_template(text, port=port))
        return config

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self: _EA) -> _EA:
        """Start the loop thread and the broker; on a restart, bind the same port again."""
        with self._lock:
            if self.running:
                raise RuntimeError(f"{self!r} is already running")
            port = self._port if self._port is not None else self._requested_port
            config = self._build_config(port)
            if self.log_level is not None:
                amqtt_logger = logging.getLogger("amqtt")
                if amqtt_logger.level == logging.NOTSET or amqtt_logger.level > self.log_level:
                    amqtt_logger.setLevel(self.log_level)
            loop = asyncio.new_event_loop()
            started = threading.Event()
            thread = threading.Thread(
                target=self._run_loop, args=(loop, started), name=f"embedded-amqtt-{port}", daemon=True
            )
            thread.start()
            started.wait()
            self._log.thread_id = thread.ident
            logging.getLogger("amqtt").addHandler(self._log)
            self._loop, self._thread = loop, thread
            future = asyncio.run_coroutine_threadsafe(self._astart(config), loop)
            try:
                broker, bound_port = future.result(self.startup_timeout)
            except BaseException as exc:
                self._stop_loop()
                raise BrokerStartError(
                    f"embedded amqtt did not start: {exc!r}\n{_tail(self.log_text())}"
                ) from exc
            self._broker, self._port = broker, bound_port
            logger.info("started %s", self.describe())
            return self

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        try:
            loop.run_forever()
        finally:
            try:
                EmbeddedAmqtt._cancel_tasks(loop)
                # amqtt's shutdown leaves some client connections open; their transports and
                # StreamWriters would warn (ResourceWarning) whenever the collector reaches them,
                # which under ``filterwarnings = error`` fails whatever test runs at that moment.
                transports = getattr(loop, "_transports", None)  # selector loops: fd -> transport
                if transports is not None:
                    for transport in list(transports.values()):
                        transport.abort()
                    loop.run_until_complete(asyncio.sleep(0))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
                # a connection the listener took meanwhile started a task of its own (asyncio
                # logs "Task was destroyed but it is pending!" for one left at the close)
                EmbeddedAmqtt._cancel_tasks(loop)
            finally:
                loop.close()

    @staticmethod
    def _cancel_tasks(loop: asyncio.AbstractEventLoop) -> None:
        """Cancel the loop's tasks and let them end, again for those they started (a few
        rounds at most)."""
        for _ in range(5):
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            if not pending:
                return
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    @staticmethod
    async def _astart(config: dict[str, Any]) -> tuple[Any, int]:
        # Build the Broker inside the running loop: it captures asyncio.get_running_loop().
        from amqtt.broker import Broker  # noqa: PLC0415 - heavy import, only when used

        broker = Broker(config)
        await broker.start()
        # With bind 127.0.0.1:0 the port is only known from the listener's server socket.
        server = broker._servers["default"].instance  # noqa: SLF001 - amqtt has no public accessor
        port: int = server.sockets[0].getsockname()[1]
        return broker, port

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on the broker's loop from another thread and return its result."""
        if self._loop is None:
            raise RuntimeError("embedded amqtt broker not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(loop.stop)
            thread.join(self.stop_timeout)
            if thread.is_alive():
                logger.warning("embedded amqtt loop thread did not finish within %.1fs", self.stop_timeout)
        logging.getLogger("amqtt").removeHandler(self._log)
        self._loop = self._thread = None
        self._broker = None

    def stop(self, timeout: float | None = None) -> None:
        """``await broker.shutdown()`` on its loop, then stop the loop and join the thread."""
        with self._lock:
            if self._loop is None:
                return
            broker = self._broker
            if broker is not None:
                try:
                    self.call(broker.shutdown(), self.stop_timeout if timeout is None else timeout)
                except (concurrent.futures.TimeoutError, TimeoutError):
                    logger.warning("embedded amqtt shutdown timed out")
                except Exception:  # noqa: BLE001 - keep going: the loop must stop regardless
                    logger.exception("embedded amqtt shutdown failed")
            self._stop_loop()
            logger.info("stopped %s", self.describe())

    def kill(self) -> None:
        """Same as :meth:`stop` (an in-process broker cannot be SIGKILLed)."""
        self.stop(timeout=2.0)

    def restart(self: _EA, *, kill: bool = False) -> _EA:
        """Stop and start again on the same port (amqtt forgets all sessions on start)."""
        with self._lock:
            self.stop(timeout=2.0 if kill else None)
            return self.start()

    def __enter__(self: _EA) -> _EA:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

