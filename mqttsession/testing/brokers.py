"""Real MQTT brokers for tests and demos, bound to 127.0.0.1 on free ports.

* :class:`MosquittoBroker` - the ``mosquitto`` binary (MQTT 3.1.1 and 5) as a child process.
* :class:`AmqttProcess` - amqtt (MQTT 3.1.1) as a child process
  (``python -m mqttsession.testing.amqtt_runner``).
* :class:`EmbeddedAmqtt` - amqtt in this process, on an asyncio loop in a daemon thread.
* :class:`RedisServer` - Debian's ``redis-server``, no persistence (the aedes cluster's store).
* :class:`AedesBroker` - one aedes node (npm, MQTT 3.1.1) run by ``brokers/aedes/broker.js`` with
  Node.js; in memory, or against a :class:`RedisServer`. :class:`AedesCluster` is a Redis and
  several aedes nodes sharing it (a session made on one node resumes on another).

The slower servers of the broker matrix (ejabberd, RabbitMQ, ActiveMQ) are in
:mod:`mqttsession.testing.server_brokers`.

All share one interface: ``start()``, ``stop()``, ``kill()``, ``restart()``, ``log_text()``,
the properties ``host``, ``port``, ``address``, ``pid``, ``running`` and use as a context manager.

Configuration templates live in the repository's ``broker_conf/`` directory (or the directory named
by the environment variable ``MQTTSESSION_BROKER_CONF``); placeholders such as ``{port}`` are
replaced by plain text substitution. When no such directory exists (an installed wheel), built-in
minimal copies of mosquitto's and amqtt's templates are used; ejabberd, RabbitMQ and ActiveMQ need
the checkout's (``MQTTSESSION_BROKER_CONF``).

PyYAML and amqtt are imported when an amqtt broker is configured or started, not on import.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, TypeVar


# typing.Self is 3.11+; these TypeVars keep "returns its own type" on 3.10
_PB = TypeVar("_PB", bound="_ProcessBroker")

__all__ = [
    "LOCALHOST",
    "AmqttProcess",
    "AnyBroker",
    "BrokerStartError",
    "EmbeddedAmqtt",
    "MosquittoBroker",
    "broker_conf_dir",
    "find_mosquitto",
    "free_port",
    "AMQTT_EXTRA",
    "amqtt_absent",
    "amqtt_missing",
    "load_template",
    "render_template",
    "wait_for_port",
]

logger = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"
"""The only address any broker or proxy of this package binds."""

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # .../mqttsession
_LOG_TAIL_CHARS = 20_000

# Minimal copies of broker_conf/*, used only when that directory cannot be found (installed wheel).
# broker_conf/ holds the commented versions; keep these in step with them.
_BUILTIN_TEMPLATES: dict[str, str] = {
    "mosquitto.conf": (
        "listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "log_dest stderr\n"
        "log_type all\n"
        "connection_messages true\n"
        "log_timestamp true\n"
        "log_timestamp_format %Y-%m-%dT%H:%M:%S\n"
        "set_tcp_nodelay true\n"
    ),
    "mosquitto-persist.conf": (
        "listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence true\n"
        "persistence_location {persistence_dir}\n"
        "persistence_file mosquitto.db\n"
        "autosave_interval 0\n"
        "user root\n"
        "log_dest stderr\n"
        "log_type all\n"
        "connection_messages true\n"
        "log_timestamp true\n"
        "log_timestamp_format %Y-%m-%dT%H:%M:%S\n"
        "set_tcp_nodelay true\n"
    ),
    "amqtt.yaml": (
        "listeners:\n"
        "  default:\n"
        "    type: tcp\n"
        '    bind: "127.0.0.1:{port}"\n'
        "    max_connections: 0\n"
        "session_expiry_interval: null\n"
        "timeout_disconnect_delay: 0\n"
        "plugins:\n"
        "  mqttsession.testing.amqtt_plugins.KeepSessionsAuthPlugin: {}\n"
        "  amqtt.plugins.logging_amqtt.PacketLoggerPlugin: {}\n"
    ),
}


class BrokerStartError(RuntimeError):
    """A broker did not come up; the message includes the tail of its log."""


# --------------------------------------------------------------------------------------------
# helpers


# the extra that brings the embedded amqtt broker (setup.cfg [options.extras_require])
AMQTT_EXTRA = 'pip install "mqttsession[demo]"'


def amqtt_absent() -> str | None:
    """The module an amqtt broker needs that is not installed (None: none): amqtt and PyYAML
    are the ``demo`` extra's, not ``pip install mqttsession``'s."""
    try:
        import amqtt.broker  # noqa: F401, PLC0415 - only asked whether it imports
        _yaml()
    except ImportError as exc:
        return exc.name or "amqtt"
    return None


def amqtt_missing(command: str, also: str = "") -> str | None:
    """Why ``command`` cannot start the embedded amqtt broker here (None when it can)."""
    absent = amqtt_absent()
    if absent is None:
        return None
    return (f"mqttsession {command}: starting the embedded amqtt broker needs {absent}, which is"
            f" not installed.\nInstall it with: {AMQTT_EXTRA}\n(or pass --broker HOST:PORT of a"
            f" running broker{also})")


def broker_conf_dir() -> Path | None:
    """The directory holding the broker configuration templates, or None if there is none.

    ``$MQTTSESSION_BROKER_CONF`` if set, else ``broker_conf/`` next to the ``mqttsession`` package
    (the repository root for a source checkout or an editable install).
    """
    env = os.environ.get("MQTTSESSION_BROKER_CONF")
    if env:
        return Path(env)
    candidate = _PACKAGE_DIR.parent / "broker_conf"
    return candidate if candidate.is_dir() else None


def load_template(template: str | os.PathLike[str]) -> tuple[str, str]:
    """Return ``(text, origin)`` of a configuration template.

    ``template`` is either a path to an existing file, or a file name looked up in
    :func:`broker_conf_dir`, falling back to the built-in copy of that name.
    """
    path = Path(template)
    if path.is_file():
        return path.read_text(encoding="utf-8"), str(path)
    name = str(template)
    conf_dir = broker_conf_dir()
    if conf_dir is not None and os.sep not in name and (conf_dir / name).is_file():
        found = conf_dir / name
        return found.read_text(encoding="utf-8"), str(found)
    if name in _BUILTIN_TEMPLATES:
        return _BUILTIN_TEMPLATES[name], f"<built-in {name}>"
    raise FileNotFoundError(
        f"broker configuration template not found: {template!r} (an installed package has"
        " mosquitto's and amqtt's alone: set MQTTSESSION_BROKER_CONF to a source checkout's"
        " broker_conf/)")


def render_template(text: str, **values: object) -> str:
    """Replace each ``{name}`` in ``text`` by ``str(values[name])`` (plain text, not str.format)."""
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def _yaml() -> Any:
    """PyYAML, imported only when an amqtt configuration is read: importing this module (and the
    pytest plugin) must work without it, so that the unit tests run where no broker is installed."""
    import yaml  # type: ignore[import-untyped]  # noqa: PLC0415 - no stubs; amqtt depends on PyYAML

    return yaml


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port on ``host`` that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """True once a TCP connection to ``host:port`` succeeds, False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def find_binary(env_var: str, name: str, candidates: tuple[str, ...] = ()) -> str | None:
    """Path of an executable: ``$env_var`` (if set, only it), then PATH, then ``candidates``."""
    env = os.environ.get(env_var)
    if env:
        return env if os.access(env, os.X_OK) else None
    found = shutil.which(name)
    if found:
        return found
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary: ``$MOSQUITTO_BIN``, then PATH, then the usual sbin dirs."""
    return find_binary("MOSQUITTO_BIN", "mosquitto", (
        "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto"))


def _tail(text: str, limit: int = _LOG_TAIL_CHARS) -> str:
    return text if len(text) <= limit else "...\n" + text[-limit:]


# --------------------------------------------------------------------------------------------
# brokers run as child processes

_RUNNING: set[_ProcessBroker] = set()
_RUNNING_LOCK = threading.Lock()


def _kill_leftovers() -> None:
    """At interpreter exit, SIGKILL every broker process this process started and did not stop."""
    with _RUNNING_LOCK:
        leftovers = list(_RUNNING)
    for broker in leftovers:
        try:
            broker.kill()
        except Exception:  # noqa: BLE001 - best effort at exit
            logger.exception("could not kill %r at exit", broker)


atexit.register(_kill_leftovers)


class _ProcessBroker:
    """Common machinery of brokers that run as a child process, stopped by pid."""

    kind: ClassVar[str] = "broker"
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(self, *, startup_timeout: float = 10.0, stop_timeout: float = 10.0) -> None:
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"mqttsession-{self.kind}-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.workdir), ignore_errors=True)
        self.log_path = self.workdir / f"{self.kind}.log"
        self.log_path.touch()
        self.returncodes: list[int] = []
        self._log_offset = 0  # where the current run's output starts in the log

    # -- to implement ------------------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write configuration files for ``self._port`` before each start."""

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        """Wait until the broker serves; False when ``proc`` exited or the deadline passed."""
        assert self._port is not None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if wait_for_port(LOCALHOST, self._port, timeout=0.0) and proc.poll() is None:
                return True
            time.sleep(0.02)
        return False

    def _env(self) -> dict[str, str] | None:
        return None

    # -- properties --------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.kind} broker not started yet")
        return self._port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.kind} broker not started yet")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """Everything the broker process wrote to stdout/stderr, across restarts."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_since_start(self) -> str:
        """What the broker process wrote since its latest start."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode("utf-8", errors="replace")

    def _wait_log_line(self, proc: subprocess.Popen[bytes], needle: str, deadline: float,
                       *, failure: str | None = None) -> bool:
        """Wait until ``needle`` appears in this run's log; False when ``proc`` exited, when
        ``failure`` appeared first, or at the deadline."""
        while time.monotonic() < deadline:
            text = self.log_since_start()
            if needle in text:
                return proc.poll() is None
            if proc.poll() is not None or (failure is not None and failure in text):
                return False
            time.sleep(0.05)
        return False

    def describe(self) -> str:
        port = self._port if self._port is not None else "?"
        return f"{self.kind} {LOCALHOST}:{port}"

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc is not None else None
        return f"<{type(self).__name__} {self.describe()} pid={pid} running={self.running}>"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self: _PB) -> _PB:
        """Start the broker (on a new free port the first time, the same port afterwards)."""
        with self._lock:
            if self.running:
                raise RuntimeError(f"{self!r} is already running")
            fixed_port = self._port is not None
            attempts = 1 if fixed_port else 3
            error: BrokerStartError | None = None
            for _ in range(attempts):
                if not fixed_port:
                    self._port = free_port()
                try:
                    self._spawn()
                    return self
                except BrokerStartError as exc:
                    error = exc
                    # Another process may have taken the port between free_port() and the bind.
                    if "in use" not in str(exc).lower():
                        break
            if not fixed_port:
                self._port = None
            assert error is not None
            raise error

    def _spawn(self) -> None:
        self._prepare()
        command = self._command()
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            log.write(f"=== mqttsession: {stamp} starting {self.describe()}: {' '.join(command)}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._env(),
                # Own process group: a Ctrl-C at the terminal reaches the test run, which then stops
                # its brokers itself; the broker never sees a stray SIGINT mid-test.
                start_new_session=True,
            )
        logger.info("started %s pid %d", self.describe(), proc.pid)
        deadline = time.monotonic() + self.startup_timeout
        if self._wait_ready(proc, deadline):
            self._proc = proc
            with _RUNNING_LOCK:
                _RUNNING.add(self)
            return
        # Failed: make sure it is gone, then report its log.
        if proc.poll() is None:
            proc.kill()
        rc = proc.wait()
        self.returncodes.append(rc)
        raise BrokerStartError(
            f"{self.describe()} did not start within {self.startup_timeout:.1f}s (exit code {rc});"
            f" log {self.log_path}:\n{_tail(self.log_text())}"
        )

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        try:
            os.kill(self._proc.pid, sig)
        except ProcessLookupError:
            pass

    def _reap(self, timeout: float | None) -> int:
        assert self._proc is not None
        rc = self._proc.wait(timeout=timeout)
        self.returncodes.append(rc)
        self._proc = None
        with _RUNNING_LOCK:
            _RUNNING.discard(self)
        return rc

    def stop(self, timeout: float | None = None) -> int | None:
        """Stop cleanly by pid (``stop_signal``); SIGKILL after ``timeout``. Returns the exit code."""
        with self._lock:
            if self._proc is None:
                return None
            if self._proc.poll() is not None:
                return self._reap(None)
            timeout = self.stop_timeout if timeout is None else timeout
            logger.info("stopping %s pid %d with %s", self.describe(), self._proc.pid, self.stop_signal.name)
            self._signal(self.stop_signal)
            try:
                return self._reap(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s pid %d ignored %s for %.1fs; killing it",
                               self.describe(), self._proc.pid, self.stop_signal.name, timeout)
                self._signal(signal.SIGKILL)
                return self._reap(None)

    def kill(self) -> int | None:
        """SIGKILL the broker (no clean shutdown, nothing saved). Returns the exit code."""
        with self._lock:
            if self._proc is None:
                return None
            logger.info("killing %s pid %d", self.describe(), self._proc.pid)
            self._signal(signal.SIGKILL)
            return self._reap(None)

    def restart(self: _PB, *, kill: bool = False) -> _PB:
        """Stop (or SIGKILL with ``kill=True``) and start again on the same port."""
        with self._lock:
            if kill:
                self.kill()
            else:
                self.stop()
            return self.start()

    def cleanup(self) -> None:
        """Stop the broker and delete its temporary directory (config, log, default persistence)."""
        self.stop()
        self._finalizer()

    def __enter__(self: _PB) -> _PB:
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


class MosquittoBroker(_ProcessBroker):
    """``mosquitto -c FILE`` on 127.0.0.1, from a template in ``broker_conf/``.

    :param conf_template: a template file name in ``broker_conf/`` (``"mosquitto.conf"``,
        ``"mosquitto-persist.conf"``) or a path to a template file.
    :param persistence_dir: substituted for ``{persistence_dir}``; defaults to a directory inside
        this broker's temporary directory, kept across restarts. Created if missing.
    :param extra_config: lines appended to the rendered configuration.
    :param mosquitto_bin: the binary; default :func:`find_mosquitto`.
    """

    kind = "mosquitto"
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        conf_template: str | os.PathLike[str] = "mosquitto.conf",
        persistence_dir: str | os.PathLike[str] | None = None,
        *,
        extra_config: str = "",
        mosquitto_bin: str | None = None,
        startup_timeout: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        binary = mosquitto_bin or find_mosquitto()
        if binary is None:
            raise FileNotFoundError("mosquitto binary not found (set MOSQUITTO_BIN or install mosquitto)")
        self.mosquitto_bin = binary
        self.conf_template = conf_template
        self.extra_config = extra_config
        super().__init__(startup_timeout=startup_timeout, stop_timeout=stop_timeout)
        self.persistence_dir = (
            Path(persistence_dir) if persistence_dir is not None else self.workdir / "persistence"
        )
        self.config_path = self.workdir / "mosquitto.conf"

    def _prepare(self) -> None:
        self.persistence_dir.mkdir(parents=True, exist_ok=True)
        text, origin = load_template(self.conf_template)
        rendered = render_template(
            text,
            port=self.port,
            # mosquitto needs the trailing separator: persistence_location is a prefix.
            persistence_dir=str(self.persistence_dir.resolve()) + os.sep,
        )
        if self.extra_config:
            rendered += "\n# extra_config\n" + self.extra_config.rstrip("\n") + "\n"
        self.config_path.write_text(f"# rendered from {origin}\n{rendered}", encoding="utf-8")

    def _command(self) -> list[str]:
        return [self.mosquitto_bin, "-c", str(self.config_path)]


class AmqttProcess(_ProcessBroker):
    """amqtt (MQTT 3.1.1) in a child process: ``python -m mqttsession.testing.amqtt_runner``.

    Stopped cleanly with SIGINT (``broker.shutdown()``), killed with SIGKILL.

    :param conf_template: a template name in ``broker_conf/`` or a path (default ``amqtt.yaml``).
    :param overrides: top-level configuration keys replacing those of the template.
    :param debug: log at DEBUG level (every packet, via amqtt's PacketLoggerPlugin).
    """

    kind = "amqtt"
    stop_signal = signal.SIGINT

    def __init__(
        self,
        conf_template: str | os.PathLike[str] = "amqtt.yaml",
        *,
        overrides: Mapping[str, Any] | None = None,
        debug: bool = True,
        startup_timeout: float = 15.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.conf_template = conf_template
        self.overrides = dict(overrides or {})
        self.debug = debug
        super().__init__(startup_timeout=startup_timeout, stop_timeout=stop_timeout)
        self.config_path = self.workdir / "amqtt.yaml"
        self.ready_path = self.workdir / "ready.json"

    def _prepare(self) -> None:
        text, origin = load_template(self.conf_template)
        rendered = render_template(text, port=self.port)
        if self.overrides:
            yaml = _yaml()
            config = yaml.safe_load(rendered)
            config.update(self.overrides)
            rendered = yaml.safe_dump(config, sort_keys=False)
        self.config_path.write_text(f"# rendered from {origin}\n{rendered}", encoding="utf-8")
        self.ready_path.unlink(missing_ok=True)

    def _command(self) -> list[str]:
        command = [
            sys.executable, "-m", "mqttsession.testing.amqtt_runner",
            "--config", str(self.config_path),
            "--ready-file", str(self.ready_path),
            "--parent-pid", str(os.getpid()),
        ]
        if self.debug:
            command.append("--debug")
        return command

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Make sure the child imports this very mqttsession (and its amqtt plugin), even uninstalled.
        parent = str(_PACKAGE_DIR.parent)
        env["PYTHONPATH"] = parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        # The runner writes ready.json once broker.start() returned (listener bound). Waiting for it
        # instead of probing the port spares amqtt a connection without CONNECT (an error log line).
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if self.ready_path.exists():
                info = json.loads(self.ready_path.read_text(encoding="utf-8"))
                return bool(info.get("port") == self._port and proc.poll() is None)
            time.sleep(0.02)
        return False


from .embedded_amqtt import EmbeddedAmqtt  # noqa: E402  (re-exported; it uses the helpers above)

AnyBroker = MosquittoBroker | AmqttProcess | EmbeddedAmqtt
"""Any of the brokers of this module (``node_brokers.AedesBroker`` runs on Node.js)."""
