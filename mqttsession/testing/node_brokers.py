"""The brokers that run on Node.js for the tests: aedes (npm, pinned in ``brokers/aedes``), one
node or a cluster of nodes sharing the ``redis-server`` started here. Same rules as
``brokers.py``: free ports on 127.0.0.1, stopped by pid, logs kept for a failing test.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from types import TracebackType

from .brokers import _PACKAGE_DIR, LOCALHOST, _ProcessBroker, find_binary

logger = logging.getLogger(__name__)

__all__ = [
    "AedesBroker",
    "AedesCluster",
    "RedisServer",
    "aedes_dir",
    "aedes_unavailable",
    "find_node",
    "find_redis_server",
]


_NPM_CI_HINT = "npm ci --prefix brokers/aedes"


def find_node() -> str | None:
    """Path of the Node.js binary: ``$NODE_BIN``, then ``node`` on PATH."""
    return find_binary("NODE_BIN", "node")


def find_redis_server() -> str | None:
    """Path of ``redis-server``: ``$REDIS_SERVER_BIN``, then PATH, then /usr/bin and /usr/sbin."""
    return find_binary("REDIS_SERVER_BIN", "redis-server", (
        "/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"))


def aedes_dir() -> Path:
    """The folder holding ``broker.js`` and its ``node_modules``: ``$MQTTSESSION_AEDES_DIR``, else
    ``brokers/aedes`` in the repository."""
    env = os.environ.get("MQTTSESSION_AEDES_DIR")
    return Path(env) if env else _PACKAGE_DIR.parent / "brokers" / "aedes"


def _node_major(node: str) -> int | None:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10,  # noqa: S603
                             check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        return int(out.lstrip("v").split(".")[0])
    except ValueError:
        return None


def aedes_unavailable(*, redis: bool = False) -> str | None:
    """Why an aedes node cannot run here (None when it can): no Node.js 20+, no ``broker.js``, its
    packages not installed (``npm ci --prefix brokers/aedes``), or, with ``redis=True``, no
    ``redis-server``."""
    node = find_node()
    if node is None:
        return "Node.js not found (aedes needs node 20+; set NODE_BIN or install nodejs)"
    major = _node_major(node)
    if major is None or major < 20:
        return f"aedes 1.x needs Node.js 20+, {node} is {major or 'unknown'}"
    folder = aedes_dir()
    if not (folder / "broker.js").is_file():
        return f"{folder / 'broker.js'} not found (a source checkout has it; or set MQTTSESSION_AEDES_DIR)"
    if not (folder / "node_modules" / "aedes").is_dir():
        return f"aedes' npm packages are not installed in {folder}: run {_NPM_CI_HINT}"
    if redis and find_redis_server() is None:
        return "redis-server not found (apt-get install -y redis-server, or set REDIS_SERVER_BIN)"
    return None


class RedisServer(_ProcessBroker):
    """``redis-server`` on 127.0.0.1, in memory only (``--save "" --appendonly no``).

    Not an MQTT broker: the shared store of an :class:`AedesCluster`. Ready when it logs
    "Ready to accept connections"; stopped with SIGTERM.
    """

    kind = "redis"
    stop_signal = signal.SIGTERM

    def __init__(self, *, redis_bin: str | None = None, startup_timeout: float = 10.0,
                 stop_timeout: float = 10.0) -> None:
        binary = redis_bin or find_redis_server()
        if binary is None:
            raise FileNotFoundError("redis-server not found (apt-get install -y redis-server)")
        self.redis_bin = binary
        super().__init__(startup_timeout=startup_timeout, stop_timeout=stop_timeout)

    def _command(self) -> list[str]:
        return [
            self.redis_bin, "--port", str(self.port), "--bind", LOCALHOST, "--save", "",
            "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "yes",
        ]

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        # on a port taken meanwhile it logs "Address already in use" and exits: start() retries
        return self._wait_log_line(proc, "Ready to accept connections", deadline)


class AedesBroker(_ProcessBroker):
    """One aedes node (MQTT 3.1.1): ``node brokers/aedes/broker.js --port PORT [--redis-port N]``.

    :param redis: the :class:`RedisServer` whose store and pub/sub this node shares with the
        other nodes started against it; None keeps everything in this node's memory.
    :param node_id: the aedes broker id (shows in its log).
    :param verbose: log every publish and acknowledgement.

    Ready when the script prints ``READY``; SIGTERM closes it cleanly, :meth:`kill` is SIGKILL.
    :func:`aedes_unavailable` says why one cannot run here.
    """

    kind = "aedes"
    stop_signal = signal.SIGTERM

    def __init__(self, redis: RedisServer | None = None, *, node_id: str = "", verbose: bool = False,
                 node_bin: str | None = None, startup_timeout: float = 20.0,
                 stop_timeout: float = 10.0) -> None:
        reason = aedes_unavailable() if node_bin is None else None
        if reason is not None:
            raise FileNotFoundError(reason)
        binary = node_bin or find_node()
        assert binary is not None
        self.node_bin = binary
        self.redis = redis
        self.node_id = node_id
        self.verbose = verbose
        self.script = aedes_dir() / "broker.js"
        super().__init__(startup_timeout=startup_timeout, stop_timeout=stop_timeout)

    def describe(self) -> str:
        name = f"aedes {self.node_id}" if self.node_id else "aedes"
        port = self._port if self._port is not None else "?"
        return f"{name} {LOCALHOST}:{port}"

    def _command(self) -> list[str]:
        command = [self.node_bin, str(self.script), "--host", LOCALHOST, "--port", str(self.port)]
        if self.redis is not None:
            command += ["--redis-host", LOCALHOST, "--redis-port", str(self.redis.port)]
        if self.node_id:
            command += ["--id", self.node_id]
        if self.verbose:
            command.append("--verbose")
        return command

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        # on a port taken meanwhile it prints "address in use" and exits: start() retries
        return self._wait_log_line(proc, "READY ", deadline)


class AedesCluster:
    """A :class:`RedisServer` and ``size`` :class:`AedesBroker` nodes sharing it, on 127.0.0.1.

    ``nodes[i].address`` is each node's MQTT address; a session made on one node resumes on any
    other (aedes-persistence-redis keeps sessions, subscriptions and queued messages in Redis,
    mqemitter-redis routes messages between nodes). :meth:`stop` stops the nodes, then Redis.
    """

    def __init__(self, size: int = 2, *, verbose: bool = False, startup_timeout: float = 20.0) -> None:
        if size < 1:
            raise ValueError("an aedes cluster needs at least one node")
        reason = aedes_unavailable(redis=True)
        if reason is not None:
            raise FileNotFoundError(reason)
        self.redis = RedisServer()
        self.nodes = [
            AedesBroker(self.redis, node_id=chr(ord("A") + i), verbose=verbose, startup_timeout=startup_timeout)
            for i in range(size)
        ]

    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self.nodes]

    def start(self) -> AedesCluster:
        """Start Redis, then every node (a node already running is left alone)."""
        try:
            if not self.redis.running:
                self.redis.start()
            for node in self.nodes:
                if not node.running:
                    node.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node (SIGTERM), then Redis."""
        for node in self.nodes:
            try:
                node.stop()
            except Exception:  # noqa: BLE001 - stop the others
                logger.exception("could not stop %r", node)
                node.kill()
        self.redis.stop()

    def cleanup(self) -> None:
        self.stop()
        for node in self.nodes:
            node.cleanup()
        self.redis.cleanup()

    def log_sources(self) -> list[_ProcessBroker]:
        return [*self.nodes, self.redis]

    def describe(self) -> str:
        return "aedes cluster " + ", ".join(node.describe() for node in self.nodes)

    def __repr__(self) -> str:
        return f"<AedesCluster {self.nodes!r} {self.redis!r}>"

    def __enter__(self) -> AedesCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
