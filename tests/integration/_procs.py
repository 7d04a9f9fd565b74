"""Helpers for the ``test_client_*`` integration tests.

Two halves:

* run as a script (``python _procs.py``), this file is a *worker*: a child process that owns one
  ``mqttsession.Client`` and obeys JSON commands read line by line from stdin, answering each with
  one JSON line on stdout. Saving a session in one worker and restoring it in another is how the
  tests prove that the saved text alone carries the session into a NEW process.
* imported, it gives the parent side: :class:`Worker` (drives a worker process), :class:`Counter`
  (an independent plain paho-mqtt VERSION2 subscriber that counts deliveries by message number),
  :func:`wait_until` and the payload helpers.

Payloads are ``"<tag>:<n>"``: a per-test tag and the message number. QoS alternates: odd numbers
QoS 1, even numbers QoS 2 (:func:`qos_of`).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

MARK = "@@mqttsession-worker@@ "
TIMEOUT = 15.0


# ================================================================================================
# shared helpers


def qos_of(n: int) -> int:
    """Numbered messages alternate: odd numbers QoS 1, even numbers QoS 2."""
    return 1 if n % 2 else 2


def payload(tag: str, n: int) -> str:
    return f"{tag}:{n}"


def number_of(tag: str, data: bytes | str) -> int | None:
    """The message number of a payload of this test, or None (another tag, a sentinel)."""
    text = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else data
    prefix = f"{tag}:"
    if not text.startswith(prefix):
        return None
    rest = text[len(prefix):]
    return int(rest) if rest.isdigit() else None


def crash_copy(path: str | os.PathLike[str], client_id: str) -> list[bytes]:
    """The outgoing messages a process restarted now would recover from the state file at
    ``path`` (what a kill -9 leaves: the files copied, the copy read)."""
    from pathlib import Path

    from mqttsession.journal import JOURNAL_SUFFIX, Journal

    path = Path(path)
    copy = path.with_name(path.name + "-crash")
    for src, dst in ((path, copy), (Path(f"{path}{JOURNAL_SUFFIX}"),
                                    Path(f"{copy}{JOURNAL_SUFFIX}"))):
        dst.unlink(missing_ok=True)  # (an earlier copy's)
        if src.exists():
            dst.write_bytes(src.read_bytes())
    j = Journal(str(copy), client_id, sync=False)
    try:
        return [m.payload for m in j.recover().outgoing.values()]
    finally:
        j.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def address(broker: Any) -> str:
    """``HOST:PORT`` of a broker fixture (``FailoverServers``, ``Options.address``)."""
    return f"{broker.host}:{broker.port}"


def reconnecting_client(prefix: str, delay: float, protocol: int = 5,
                        **config: str) -> Any:
    """A persistent-session ``Client`` that reconnects after ``delay`` s (MQTT 5: a session
    kept 600 s), with the given config settings."""
    import mqttsession

    c = mqttsession.Client(client_id=unique(prefix), clean_session=False,
                           protocol_version=protocol)
    c.config(f"ReconnectDelayMin={delay:g}")
    c.config(f"ReconnectDelayMax={delay:g}")
    if protocol == 5:
        c.config("SessionExpInterval=600")
    for name, value in config.items():
        c.config(f"{name}={value}")
    return c


def wait_until(pred: Callable[[], Any], timeout: float = TIMEOUT, what: str = "condition",
               interval: float = 0.02) -> Any:
    """Poll ``pred`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# ================================================================================================
# the worker (child process side)


def _jsonable(event: object) -> dict[str, Any]:
    """An event dataclass (or Message) as JSON: bytes -> text, nested messages kept."""
    out: dict[str, Any] = {}
    for name in event.__slots__:  # type: ignore[attr-defined]
        value = getattr(event, name)
        out[name] = _value(value)
    return out


def _value(value: object) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, tuple):
        return [_value(v) for v in value]
    if hasattr(value, "__slots__") and hasattr(value, "__dataclass_fields__"):
        return _jsonable(value)
    return value


class _WorkerState:
    def __init__(self) -> None:
        self.client: Any = None
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.in_connected: list[dict[str, Any]] = []  # what on_connected saw and did

    def record(self, name: str, event: object) -> None:
        with self.lock:
            self.events.append({"event": name, **_jsonable(event)})

    def count(self, name: str) -> int:
        with self.lock:
            return sum(1 for e in self.events if e["event"] == name)


def _worker_main() -> None:  # pragma: no cover - runs in the child
    import mqttsession  # noqa: PLC0415 - the child imports it, the parent may not need it

    w = _WorkerState()
    restore_on_connect: dict[str, Any] = {"state": None}

    def attach(c: Any) -> None:
        for name in ("on_disconnected", "on_message_in", "on_message_out", "on_message_ack",
                     "on_subscribed", "on_session_lost", "on_error"):
            setattr(c, name, (lambda n: lambda ev: w.record(n, ev))(name))

        def on_connected(ev: Any) -> None:
            w.record("on_connected", ev)
            saved = restore_on_connect["state"]
            if saved is None:
                return
            # IPWorks procedure 1: read SessionPresent inside on_connected, restore from inside it
            present = c.config("SessionPresent")
            info: dict[str, Any] = {"SessionPresent": present, "restored": False}
            if present == "True":
                try:
                    c.restore_session(saved)
                    info["restored"] = True
                except Exception as exc:  # noqa: BLE001 - reported to the parent
                    info["error"] = f"{type(exc).__name__}: {exc}"
            restore_on_connect["state"] = None
            with w.lock:
                w.in_connected.append(info)

        c.on_connected = on_connected

    def msgs(seq: Iterable[Any]) -> list[dict[str, Any]]:
        return [_jsonable(m) for m in seq]

    def handle(cmd: dict[str, Any]) -> Any:
        op = cmd.pop("op")
        c = w.client
        if op == "new":
            configs = cmd.pop("config", [])
            c = mqttsession.Client(**cmd)
            for setting in configs:
                c.config(setting)
            attach(c)
            w.client = c
            return None
        if op == "config":
            return c.config(cmd["setting"])
        if op == "restore":
            c.restore_session(cmd["state"])
            return None
        if op == "connect":
            restore_on_connect["state"] = cmd.get("restore_in_on_connected")
            c.connect("127.0.0.1", cmd["port"], timeout=cmd.get("timeout", TIMEOUT))
            return None
        if op == "publish":
            return c.publish_message(cmd["topic"], cmd["qos"], cmd["message"])
        if op == "publish_many":
            return [c.publish_message(cmd["topic"], q, m) for q, m in cmd["messages"]]
        if op == "subscribe":
            c.subscribe(cmd["topic"], cmd["qos"])
            return None
        if op == "save":
            return c.save_session()
        if op == "flush":
            return c.flush(cmd.get("timeout", TIMEOUT))
        if op == "disconnect":
            c.disconnect()
            return None
        if op == "status":
            with w.lock:
                in_connected = list(w.in_connected)
            return {
                "connected": c.connected,
                "client_id": c.client_id,
                "clean_session": c.clean_session,
                "outgoing": msgs(c.outgoing_messages),
                "incoming": msgs(c.incoming_messages),
                "in_connected": in_connected,
            }
        if op == "events":
            with w.lock:
                return list(w.events)
        if op == "wait_event":
            name, count = cmd["event"], cmd.get("count", 1)
            deadline = time.monotonic() + cmd.get("timeout", TIMEOUT)
            while w.count(name) < count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{count} x {name} not seen; events: {w.events}")
                time.sleep(0.01)
            return None
        if op == "wait_disconnected":
            deadline = time.monotonic() + cmd.get("timeout", TIMEOUT)
            while c.connected:
                if time.monotonic() > deadline:
                    raise TimeoutError("still connected")
                time.sleep(0.01)
            return None
        if op == "exit":
            # end the process WITHOUT disconnecting or closing anything: the session must live in
            # the saved text (or file), not in this process
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        raise ValueError(f"unknown op {op!r}")

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            result = {"ok": True, "result": handle(json.loads(line))}
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent
            traceback.print_exc(file=sys.stderr)
            result = {"ok": False, "error": type(exc).__name__, "message": str(exc),
                      "mro": [k.__name__ for k in type(exc).__mro__]}
        sys.stdout.write(MARK + json.dumps(result) + "\n")
        sys.stdout.flush()


# ================================================================================================
# the parent side


class WorkerError(Exception):
    """A command failed in the worker: ``error`` is the exception's class name, ``mro`` its bases."""

    def __init__(self, op: str, reply: dict[str, Any]) -> None:
        self.error = reply.get("error", "")
        self.mro = reply.get("mro", [])
        super().__init__(f"worker {op}: {self.error}: {reply.get('message')}")


class Worker:
    """One child process owning one mqttsession.Client, driven by :meth:`call`."""

    def __init__(self, name: str = "worker") -> None:
        self.name = name
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            text=True, encoding="utf-8", env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def call(self, op: str, timeout: float = TIMEOUT + 10, **args: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise AssertionError(
                    f"{self.name}: no answer to {op} within {timeout} s; stderr:\n{self.stderr_text()}"
                ) from None
            if line is None:
                raise AssertionError(f"{self.name} exited during {op}; stderr:\n{self.stderr_text()}")
            if line.startswith(MARK):
                reply = json.loads(line[len(MARK):])
                if not reply["ok"]:
                    raise WorkerError(op, reply)
                return reply["result"]

    def exit(self) -> None:
        """End the worker abruptly (os._exit: no DISCONNECT, no cleanup) and reap it."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass
        self.proc.wait(TIMEOUT)
        self.close()

    def kill(self) -> None:
        """SIGKILL the worker (by its pid) and reap it."""
        self.proc.kill()
        self.proc.wait(TIMEOUT)
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self._reader.join(5)
        self._stderr.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Counter:
    """An independent subscriber: a plain paho-mqtt VERSION2 client, clean session, which
    (re)subscribes at QoS 2 on every CONNACK and records every delivery."""

    def __init__(self, host: str, port: int, topic: str, protocol: int = 4) -> None:
        import paho.mqtt.client as mqtt  # noqa: PLC0415
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: PLC0415

        self.topic = topic
        self._cond = threading.Condition()
        self.received: list[tuple[bytes, int, bool]] = []  # payload, qos, dup
        self.subacks = 0
        proto = MQTTProtocolVersion.MQTTv5 if protocol == 5 else MQTTProtocolVersion.MQTTv311
        self.paho = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=unique("counter"),
            protocol=proto,
        )
        self.paho.on_connect = self._on_connect
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_message = self._on_message
        self.paho.reconnect_delay_set(1, 1)
        self.paho.connect(host, port, keepalive=30)
        self.paho.loop_start()
        self.wait_subscribed(1)

    def _on_connect(self, client: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, 2)  # [MQTT-3.2.2-5] resubscribe: the broker may have forgotten

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, _codes: Any, _p: Any) -> None:
        with self._cond:
            self.subacks += 1
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._cond:
            self.received.append((bytes(msg.payload), msg.qos, bool(msg.dup)))
            self._cond.notify_all()

    def wait_subscribed(self, count: int, timeout: float = TIMEOUT) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.subacks >= count, timeout):
                raise AssertionError(f"counter: {count} SUBACKs not seen (got {self.subacks})")

    def counts(self, tag: str) -> collections.Counter[int]:
        with self._cond:
            return collections.Counter(
                n for p, _q, _d in self.received if (n := number_of(tag, p)) is not None
            )

    def order(self, tag: str) -> list[int]:
        with self._cond:
            return [n for p, _q, _d in self.received if (n := number_of(tag, p)) is not None]

    def wait_payload(self, text: str, timeout: float = TIMEOUT) -> None:
        """Wait for a payload (a sentinel published after everything else: a barrier).

        Publish the sentinel at QoS 2: the broker keeps one publisher's order, but paho hands a
        QoS 2 message over only on PUBREL, one round trip later, so a QoS 1 sentinel can overtake
        the QoS 2 messages sent before it."""
        raw = text.encode()
        with self._cond:
            if not self._cond.wait_for(lambda: any(p == raw for p, _q, _d in self.received), timeout):
                raise AssertionError(f"counter: payload {text!r} not received; got {self.received[-20:]}")

    def wait_numbers(self, tag: str, numbers: Iterable[int], timeout: float = TIMEOUT) -> None:
        want = set(numbers)
        with self._cond:
            ok = self._cond.wait_for(
                lambda: want <= {number_of(tag, p) for p, _q, _d in self.received}, timeout)
        if not ok:
            raise AssertionError(f"counter: missing {sorted(want - set(self.counts(tag)))}")

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


class EventLog:
    """Records every event of an in-process mqttsession.Client (in this process)."""

    NAMES = ("on_connected", "on_disconnected", "on_message_in", "on_message_out",
             "on_message_ack", "on_subscribed", "on_session_lost", "on_error")

    def __init__(self, client: Any) -> None:
        self._cond = threading.Condition()
        self.events: list[tuple[str, Any]] = []
        for name in self.NAMES:
            setattr(client, name, (lambda n: lambda ev: self._add(n, ev))(name))

    def _add(self, name: str, event: Any) -> None:
        with self._cond:
            self.events.append((name, event))
            self._cond.notify_all()

    def of(self, name: str) -> list[Any]:
        with self._cond:
            return [e for n, e in self.events if n == name]

    def wait(self, name: str, count: int = 1, timeout: float = TIMEOUT) -> list[Any]:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: sum(1 for n, _ in self.events if n == name) >= count, timeout)
            if not ok:
                raise AssertionError(f"{count} x {name} not seen within {timeout} s: {self.events}")
            return [e for n, e in self.events if n == name]


class LockHolder:
    """``lock`` held by a thread of its own (as a disk-queue batch holds a session's over its
    write and fdatasync) from ``start()`` until ``let_go()``, ``most`` seconds at most."""

    def __init__(self, lock: Any, most: float = 5.0) -> None:
        self._held, self._release = threading.Event(), threading.Event()

        def hold() -> None:
            with lock:
                self._held.set()
                self._release.wait(most)
        self._thread = threading.Thread(target=hold, daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._held.wait(TIMEOUT):
            raise AssertionError("the lock was not taken")

    @property
    def holding(self) -> bool:
        return self._held.is_set() and not self._release.is_set()

    def let_go(self) -> None:
        self._release.set()
        if self._thread.ident is not None:
            self._thread.join(TIMEOUT)


def publish_direct(host: str, port: int, topic: str, messages: Iterable[tuple[int, str]],
                   protocol: int = 4, retain: bool = False) -> None:
    """Publish ``(qos, text)`` messages with a plain paho client straight to the broker and wait
    until each flow is complete."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: PLC0415

    proto = MQTTProtocolVersion.MQTTv5 if protocol == 5 else MQTTProtocolVersion.MQTTv311
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=unique("publisher"), protocol=proto)
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        if not connected.wait(TIMEOUT):
            raise AssertionError("publisher: no CONNACK")
        infos = [client.publish(topic, text, qos, retain) for qos, text in messages]
        for info in infos:
            info.wait_for_publish(TIMEOUT)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@contextlib.contextmanager
def observed(host: str, port: int, topic: str) -> Iterator[list[bytes]]:
    """A plain paho subscriber of ``topic`` (QoS 1) for the block, subscribed before it runs:
    the payloads it got."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    got: list[bytes] = []
    ready = threading.Event()
    obs = mqtt.Client(CallbackAPIVersion.VERSION2)
    obs.on_subscribe = lambda *_a: ready.set()
    obs.on_message = lambda _c, _u, m: got.append(m.payload)
    obs.connect(host, port)
    obs.loop_start()
    try:
        obs.subscribe(topic, 1)
        if not ready.wait(TIMEOUT):
            raise AssertionError("observer: no SUBACK")
        yield got
    finally:
        obs.disconnect()
        obs.loop_stop()


def run_subscriber(host: str, port: int, state_file: str, client_id: str, topic: str,
                   transport: str = "tcp") -> list[bytes]:
    """One run of a persistent QoS 2 subscriber of ``topic`` with ``state_file``: it subscribes
    unless the broker found its session, and returns what it was handed within 0.5 s."""
    from mqttsession import Client  # noqa: PLC0415

    got: list[bytes] = []
    c = Client(client_id=client_id, clean_session=False, transport=transport)
    c.config(f"SessionStateFile={state_file}")
    c.restore_session("")
    c.on_message_in = lambda e: got.append(e.message)
    done = threading.Event()
    c.on_subscribed = lambda e: done.set()
    try:
        c.connect(host, port, timeout=10)
        if c.config("SessionPresent") != "True":
            c.subscribe(topic, 2)
            assert done.wait(10)
        time.sleep(0.5)
    finally:
        c.close()
    return got


def assert_delivered(counts: collections.Counter[int], numbers: Iterable[int]) -> None:
    """Every QoS 1 number at least once, every QoS 2 number exactly once."""
    numbers = list(numbers)
    missing = [n for n in numbers if counts[n] == 0]
    assert not missing, f"lost messages: {missing}; counts {dict(counts)}"
    doubled = [n for n in numbers if qos_of(n) == 2 and counts[n] != 1]
    assert not doubled, f"QoS 2 messages not delivered exactly once: {[(n, counts[n]) for n in doubled]}"
    extra = sorted(set(counts) - set(numbers))
    assert not extra, f"unexpected message numbers delivered: {extra}"


if __name__ == "__main__":
    _worker_main()


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 that takes TCP connections and never answers (no CONNACK)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def connect_in_thread(connect: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    """``connect()`` in a daemon thread; what it raised, in the list."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            connect()
        except BaseException as exc:  # noqa: BLE001 - looked at by the test
            raised.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, raised


class SlowUplink:
    """A loopback TCP forwarder to ``target`` passing client-to-broker bytes at ``rate`` bytes
    a second (a slow but moving uplink), the other way at once; ``drained`` is set once a
    client's side ended and every byte it sent went on (the broker's side then shut)."""

    def __init__(self, target: tuple[str, int], rate: int) -> None:
        self.target, self.rate, self.drained = target, rate, threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(self.target)
            self.socks += [down, up]
            threading.Thread(target=self._pipe, args=(down, up, self.rate), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, down, 0), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, rate: int) -> None:
        try:
            while data := src.recv(4096 if rate else 65536):
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        if rate:
            self.drained.set()

    def close(self) -> None:
        self.listener.close()
        for s in self.socks:
            s.close()
