"""The ``mqttsession`` command: ``demo`` and ``inspect``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any, Sequence

from .codec import SavedState, load_state
from .errors import MQTTSessionError, StateError

__all__ = ["main"]

log = logging.getLogger("mqttsession.cli")

DEMO_TOPIC = "mqttsession/demo"


def _split_broker(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


# ====================================================================== demo


def _demo_publisher(args: argparse.Namespace) -> int:
    """Child process of the demo: publish a numbered stream with a state file."""
    from .client import Client

    host, port = args.broker
    c = Client(client_id="mqttsession-demo-publisher", clean_session=False)
    c.config(f"SessionStateFile={args.state}")
    c.config("MaxInflight=50")
    c.restore_session("")  # the IPWorks restart: state file set, restore, connect
    held = len(c.outgoing_messages)
    c.connect(host, port, timeout=10)
    for n in range(args.first, args.last):
        c.publish_message(DEMO_TOPIC, 1 + n % 2, str(n))
    if args.crash:
        # a "crash": the process ends without DISCONNECT, messages still in flight
        inflight = len(c.outgoing_messages)
        sys.stdout.write(f"{held} {inflight}\n")
        sys.stdout.flush()
        os._exit(0)
    c.flush(15)  # a broker may leave a flow open (amqtt: PUBCOMP after a reconnect)
    c.disconnect()
    sys.stdout.write(f"{held} {len(c.outgoing_messages)}\n")
    return 0


def _run_child(args: Sequence[str]) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-m", "mqttsession", *args], capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        raise MQTTSessionError(f"demo publisher failed:\n{out.stderr.strip()[-2000:]}")
    held, inflight = (int(x) for x in out.stdout.split()[-2:])
    return held, inflight


def _demo(args: argparse.Namespace) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from .testing import EmbeddedAmqtt, MosquittoBroker
    from .testing.brokers import find_mosquitto

    embedded: Any = None
    if args.broker is None:
        kind = args.embedded
        if kind == "auto":
            kind = "mosquitto" if find_mosquitto() else "amqtt"
        embedded = (MosquittoBroker() if kind == "mosquitto" else EmbeddedAmqtt()).start()
        host, port = embedded.host, embedded.port
        where = f"its own {kind} broker on {embedded.address}"
    else:
        host, port = args.broker
        where = f"the broker at {host}:{port}"
    counts: Counter[int] = Counter()
    qos_of: dict[int, int] = {}
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        n = int(msg.payload)
        with lock:
            counts[n] += 1
            qos_of[n] = msg.qos

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="mqttsession-demo-tally")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    total, crash_at = args.count, args.count // 2
    try:
        sub.connect(host, port)
        sub.loop_start()
        sub.subscribe(DEMO_TOPIC, 2)
        if not subscribed.wait(10):
            raise MQTTSessionError("the tally subscriber got no SUBACK")
        with tempfile.TemporaryDirectory() as tmp:
            state = os.path.join(tmp, "publisher.session")
            broker = f"{host}:{port}"
            print(f"mqttsession demo against {where}")
            print(f"1. publisher process sends messages 0..{crash_at - 1} (QoS 1 and 2 alternating)"
                  " and is killed without disconnecting")
            _, inflight = _run_child(["_demo-publisher", "--broker", broker, "--state", state,
                                      "--first", "0", "--last", str(crash_at), "--crash"])
            print(f"   it died with {inflight} message(s) not yet acknowledged by the broker")
            print(f"2. a NEW process restores the session from {os.path.basename(state)}, resends,"
                  f" then sends {crash_at}..{total - 1}")
            held, left = _run_child(["_demo-publisher", "--broker", broker, "--state", state,
                                     "--first", str(crash_at), "--last", str(total)])
            print(f"   it restored {held} message(s); {left} left unacknowledged at the end")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with lock:
                    if len(counts) >= total:
                        break
                time.sleep(0.05)
            time.sleep(0.5)  # let late duplicates show up in the tally
        with lock:
            missing = [n for n in range(total) if counts[n] == 0]
            dup1 = sum(c - 1 for n, c in counts.items() if qos_of[n] == 1 and c > 1)
            dup2 = sum(c - 1 for n, c in counts.items() if qos_of[n] == 2 and c > 1)
        print("3. the independent subscriber's tally:")
        print(f"   sent {total}, received {len(counts)} distinct, missing {len(missing)},"
              f" QoS 1 repeats {dup1} (allowed: at least once), QoS 2 duplicates {dup2}")
        ok = not missing and dup2 == 0
        print("   RESULT: " + ("nothing lost, no QoS 2 duplicate" if ok else
                                f"FAILED (missing {missing[:10]}, QoS 2 duplicates {dup2})"))
        if dup2 and "amqtt" in where:
            print("   (amqtt 0.12 handles one connection's packets concurrently: a QoS 2 flow it"
                  " retries on reconnect can complete before the DUP PUBLISH that preceded it is"
                  " seen, and the broker delivers that message twice; see README.rst)")
        return 0 if ok else 1
    finally:
        sub.loop_stop()
        sub.disconnect()
        if embedded is not None:
            embedded.stop()


# ====================================================================== inspect


def _inspect_obj(s: SavedState, now: float) -> dict[str, Any]:
    def msg(m: Any) -> dict[str, Any]:
        d = {"packet_id": m.packet_id, "topic": m.topic, "qos": m.qos, "bytes": len(m.payload),
             "retain": m.retain}
        if hasattr(m, "seq"):
            d["seq"] = m.seq
            d["phase"] = m.phase.value
        return d

    return {
        "client_id": s.client_id,
        "protocol_version": s.protocol_version,
        "clean_session": s.clean_session,
        "session_expiry_interval": s.session_expiry_interval,
        "expired": s.expired(now),
        "broker": s.broker,
        "connected_at": s.connected_at,
        "disconnected_at": s.disconnected_at,
        "never_sent": [msg(m) for m in s.never_sent],
        "in_flight": [msg(m) for m in s.in_flight],
        "incoming": [msg(m) for m in s.incoming],
        "subscriptions": dict(s.subscriptions),
        "payload_bytes": sum(len(m.payload) for m in s.outgoing + s.incoming),
    }


def _read_state(path: str) -> SavedState:
    if path == "-":
        return load_state(sys.stdin.buffer.read())
    from .journal import Journal

    if not os.path.exists(path):
        raise StateError(f"{path}: no such file")
    j = Journal(path)
    try:
        return SavedState.of(j.recover())
    finally:
        j.close()


def _inspect(args: argparse.Namespace) -> int:
    s = _read_state(args.file)
    info = _inspect_obj(s, time.time())
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    exp = {True: "yes", False: "no", None: "unknown"}[info["expired"]]
    print(f"client id:        {s.client_id!r}")
    print(f"protocol:         {'MQTT 5' if s.protocol_version == 5 else 'MQTT 3.1.1'}")
    print(f"expiry interval:  {s.session_expiry_interval}  (expired: {exp})")
    for key, label in (("never_sent", "never sent"), ("in_flight", "in flight"),
                       ("incoming", "incoming QoS 2")):
        items = info[key]
        print(f"{label + ':':<18}{len(items)}")
        for m in items[:20]:
            extra = f" {m['phase']}" if "phase" in m else ""
            print(f"    id {m['packet_id']:>5} qos {m['qos']} {m['topic']!r} {m['bytes']} B{extra}")
        if len(items) > 20:
            print(f"    ... {len(items) - 20} more")
    print(f"subscriptions:    {len(s.subscriptions)}")
    for f, q in sorted(s.subscriptions.items()):
        print(f"    {f!r} qos {q}")
    print(f"payload bytes:    {info['payload_bytes']}")
    return 0


# ====================================================================== main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mqttsession", description="Durable MQTT sessions.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="crash a publisher mid-stream, restore it, count deliveries")
    d.add_argument("--broker", type=_split_broker, help="HOST:PORT (default: embedded amqtt)")
    d.add_argument("--count", type=int, default=200, help="messages to send (default 200)")
    d.add_argument("--embedded", choices=("auto", "mosquitto", "amqtt"), default="auto",
                   help="broker to start when --broker is not given (auto: mosquitto if"
                        " installed, else amqtt in-process)")
    d.set_defaults(func=_demo)
    i = sub.add_parser("inspect", help="show a saved session (a state file, or - for stdin)")
    i.add_argument("file")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=_inspect)
    h = sub.add_parser("_demo-publisher")  # internal: the demo's child process
    h.add_argument("--broker", type=_split_broker, required=True)
    h.add_argument("--state", required=True)
    h.add_argument("--first", type=int, required=True)
    h.add_argument("--last", type=int, required=True)
    h.add_argument("--crash", action="store_true")
    h.set_defaults(func=_demo_publisher)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except StateError as exc:
        print(f"mqttsession: {exc}", file=sys.stderr)
        return 2
    except MQTTSessionError as exc:
        print(f"mqttsession: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
