"""The ``mqttsession`` command: ``demo``, ``compat`` and ``inspect``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import json
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any, Sequence

from . import __version__
from .errors import MQTTSessionError, StateError, UsageError
from .inspecting import inspect as _report, read_saved as _read_state
from .options import ENV_PASSWORD, ENV_USERNAME, format_address, parse_address
from .refusals import describe_connect_error

__all__ = ["main"]

log = logging.getLogger("mqttsession.cli")

DEMO_TOPIC = "mqttsession/demo"  # a run publishes on DEMO_TOPIC/RANDOM, its client ids end -RANDOM

class _BadArguments(Exception):
    """A usage error found after parsing (exit code 2, as argparse's own)."""


def _split_broker(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``, the port 1..65535 (``--broker``, ``--failover``)."""
    if not re.fullmatch(r".+:[0-9]+", text.strip()):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (or [IPv6]:PORT), got {text!r}")
    try:
        return parse_address(text, source="address")
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _same_node(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether two ``(host, port)`` name one listener: the same port, an address in common."""

    def addresses(host: str) -> set[str]:
        try:
            return {str(info[4][0]) for info in socket.getaddrinfo(host, a[1], type=socket.SOCK_STREAM)}
        except OSError:  # unresolvable: check_broker says so
            return {host}

    return a[1] == b[1] and bool(addresses(a[0]) & addresses(b[0]))


# ====================================================================== demo


def _demo_publisher(args: argparse.Namespace) -> int:
    """Child process of the demo: publish a numbered stream with a state file."""
    from .client import Client

    c = Client(client_id=args.client_id, clean_session=False)
    c.config(f"SessionStateFile={args.state}")
    c.restore_session("")  # the IPWorks restart: state file set, restore, connect
    held = len(c.outgoing_messages)
    c.connect(args.broker[0], args.broker[1], timeout=10)
    for n in range(args.first, args.last):
        c.publish_message(args.topic, 1 + n % 2, str(n))
    if args.crash:  # a "crash": the process ends without DISCONNECT, messages still in flight
        print(held, len(c.outgoing_messages), flush=True)
        os._exit(0)
    c.flush(15)  # a broker may leave a flow open (amqtt: PUBCOMP after a reconnect)
    c.disconnect()
    sys.stdout.write(f"{held} {len(c.outgoing_messages)}\n")
    return 0


def _run_child(args: Sequence[str]) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-m", "mqttsession", *args], capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0:
        raise MQTTSessionError(f"demo publisher failed:\n{out.stderr.strip()[-2000:]}")
    held, inflight = (int(x) for x in out.stdout.split()[-2:])
    return held, inflight


def _demo_qos(n: int) -> int:
    """The QoS the demo publisher sends message ``n`` with (brokers may deliver it at another
    QoS: amqtt 0.12 uses the subscription's, so the tally goes by this, not by msg.qos)."""
    return 1 + n % 2


AMQTT_QOS2_NOTE = (
    "   amqtt 0.12 (the broker this demo starts when mosquitto is not installed) is known to\n"
    "   deliver a resent QoS 2 message twice: it handles one connection's packets in concurrent\n"
    "   tasks, so a QoS 2 flow it retries on reconnect can complete before it sees the DUP\n"
    "   PUBLISH that preceded the PUBREL on the wire (README.rst, Brokers). That is the broker\n"
    "   breaking MQTT-4.3.3-2, not the session losing track. To see exactly-once across the\n"
    "   kill, install mosquitto (apt-get install mosquitto) and run the demo again, or pass\n"
    "   --broker HOST:PORT of a broker that keeps QoS 2 promises."
)


def _tally_connect(sub: Any, host: str, port: int) -> str | None:
    """Connect the demo's tally subscriber and wait for its CONNACK: None when the broker
    accepted it, else why not (unreachable, refused, closed, no answer in 10 s)."""
    where, got, why = f"the broker at {format_address(host, port)}", threading.Event(), [""]

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure and not got.is_set():
            hint = " (the demo sends no user name or password)" if rc.value in (0x86, 0x87) else ""
            why[0] = f"{where} refused the demo's MQTT 3.1.1 CONNECT: CONNACK {rc}{hint}"
        got.set()

    def on_disconnect(*_a: Any) -> None:  # (after on_connect: a refusal, said already)
        why[0] = why[0] or ("" if got.is_set() else f"{where} closed the connection before"
                            " CONNACK (not an MQTT broker there, or a TLS listener?)")
        got.set()

    sub.on_connect, sub.on_disconnect = on_connect, on_disconnect
    try:
        sub.connect(host, port)
    except (OSError, ValueError) as exc:  # an unreachable or unknown --broker: said so
        return f"cannot connect to {host}:{port}: {describe_connect_error(exc)}"
    sub.loop_start()
    if not got.wait(10):
        return f"no CONNACK from {where} in 10 s (not an MQTT broker there, or a TLS listener?)"
    return why[0] or None


def _demo(args: argparse.Namespace) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from .testing import BrokerStartError, EmbeddedAmqtt, MosquittoBroker
    from .testing.brokers import AMQTT_EXTRA, amqtt_missing, find_mosquitto

    embedded: Any = None
    amqtt = False
    if args.broker is None:
        kind = args.embedded
        if kind == "auto":
            kind = "mosquitto" if find_mosquitto() else "amqtt"
        amqtt = kind == "amqtt"
        also = ", or install mosquitto: apt-get install mosquitto" if args.embedded == "auto" else ""
        unavailable = amqtt_missing("demo", also) if amqtt else None
        if unavailable is not None:
            print(unavailable, file=sys.stderr)
            return 2
        if amqtt and not args.verbose:
            logging.getLogger("amqtt").setLevel(logging.CRITICAL)  # its warnings are not ours
        try:
            embedded = (MosquittoBroker() if kind == "mosquitto" else EmbeddedAmqtt()).start()
        except (FileNotFoundError, BrokerStartError) as exc:  # say what, and how to get it
            what = (f"needs {kind}, which is not installed" if isinstance(exc, FileNotFoundError)
                    else f"failed: {(str(exc).strip() or type(exc).__name__).splitlines()[0]}")
            get = ("apt-get install mosquitto (or pass --embedded amqtt or" if kind == "mosquitto"
                   else f"{AMQTT_EXTRA} (or pass")
            print(f"mqttsession demo: starting the embedded {kind} broker {what}; install it:"
                  f" {get} --broker HOST:PORT of a running broker)", file=sys.stderr)
            return 2
        host, port = embedded.host, embedded.port
        where = f"its own {kind} broker on {embedded.address}"
        if amqtt and args.embedded == "auto":
            where += " (mosquitto is not installed)"
    else:
        host, port = args.broker
        where = f"the broker at {host}:{port}"
    counts: Counter[int] = Counter()
    lock, subscribed, all_in = threading.Lock(), threading.Event(), threading.Event()
    total, crash_at = args.count, args.count // 2

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            counts[int(msg.payload)] += 1
            if len(counts) >= total:
                all_in.set()

    run = secrets.token_hex(4)  # this run's ids and topic: another demo on the broker is not ours
    topic, publisher = f"{DEMO_TOPIC}/{run}", f"mqttsession-demo-publisher-{run}"
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"mqttsession-demo-tally-{run}")
    sub.on_message, sub.on_subscribe = on_message, lambda *_a: subscribed.set()
    try:
        refused = _tally_connect(sub, host, port)
        if refused is not None:
            print(f"mqttsession demo: {refused}", file=sys.stderr)
            return 2
        sub.subscribe(topic, 2)
        if not subscribed.wait(10):
            raise MQTTSessionError("the tally subscriber got no SUBACK")
        with tempfile.TemporaryDirectory() as tmp:
            name = "publisher.session"
            state, broker = os.path.join(tmp, name), format_address(host, port)
            print(f"mqttsession demo against {where}")
            print(f"1. publisher process sends messages 0..{crash_at - 1} (QoS 1 and 2 alternating)"
                  " and is killed without disconnecting")
            child = ["_demo-publisher", "--broker", broker, "--state", state, "--client-id",
                     publisher, "--topic", topic]
            _, inflight = _run_child([*child, "--first", "0", "--last", str(crash_at), "--crash"])
            print(f"   its last count before the kill: {inflight} message(s) not yet"
                  " acknowledged by the broker")
            saved, _ = _read_state(state)
            in_file = len(saved.outgoing) + saved.on_disk  # (the disk queue's are never sent)
            queued = f", {saved.on_disk} of them in its disk queue {name}.queue/" if saved.on_disk else ""
            print(f"   {name} holds {in_file} message(s) to finish ({len(saved.in_flight)} sent"
                  f" and unconfirmed, {len(saved.never_sent) + saved.on_disk} never sent{queued})")
            if in_file != inflight:
                print("   (not the last count: the network thread went on between that count and"
                      " the kill, and an\n   acknowledgement's removal is written lazily, so the"
                      " file may still hold a message the\n   broker had acknowledged: it is sent"
                      " again, a repeat that QoS 1 allows and QoS 2 dedupes)")
            print(f"2. a NEW process restores the session from {name}, resends,"
                  f" then sends {crash_at}..{total - 1}")
            held, left = _run_child([*child, "--first", str(crash_at), "--last", str(total)])
            print(f"   it restored {held} message(s); {left} left unacknowledged at the end")
            if left and amqtt:
                print("   (amqtt 0.12 does not answer a PUBREL for a QoS 2 flow it has no record of"
                      " with PUBCOMP, a known\n   bug (README.rst, Brokers); the message itself"
                      " was accepted: the tally below shows it)")
            elif left:
                print("   (the broker had not finished those flows within 15 s: they stay in the"
                      " session file and\n   are finished on the next connect)")
            all_in.wait(10)
            time.sleep(0.5)  # let late duplicates show up in the tally
        with lock:
            missing = [n for n in range(total) if counts[n] == 0]
            dup1 = sum(c - 1 for n, c in counts.items() if _demo_qos(n) == 1 and c > 1)
            dups2 = sorted(n for n, c in counts.items() if _demo_qos(n) == 2 and c > 1)
            dup2 = sum(counts[n] - 1 for n in dups2)
        print("3. the independent subscriber's tally:")
        print(f"   sent {total}, received {len(counts)} distinct, missing {len(missing)},"
              f" QoS 1 repeats {dup1} (allowed: at least once), QoS 2 duplicates {dup2}")
        ok = not missing and dup2 == 0
        if ok:
            print("   RESULT: nothing lost, no QoS 2 duplicate")
        elif amqtt and not missing:
            print(f"   RESULT: FAILED because of the broker: QoS 2 message(s) {dups2[:10]}"
                  " delivered twice")
            print(AMQTT_QOS2_NOTE)
        else:  # (amqtt on Python 3.13 acknowledges messages it never forwards, at times)
            why = " because of the broker: acknowledged, never delivered" if amqtt and not left else ""
            print(f"   RESULT: FAILED{why} (missing {missing[:10]}, QoS 2 duplicates {dups2[:10]})")
        return 0 if ok else 1
    finally:
        sub.loop_stop()
        sub.disconnect()
        if embedded is not None:
            embedded.stop()


# ====================================================================== inspect


def _inspect(args: argparse.Namespace) -> int:
    code, lines = _report(args)
    for line in lines:
        print(line)
    return code


# ====================================================================== compat


def _compat_list(as_json: bool) -> int:
    from .compat import SCENARIOS, format_list

    if as_json:
        print(json.dumps([{"name": s.name, "spec_3_1_1": s.spec4 if 4 in s.protocols else None,
                           "spec_5": s.spec5, "protocols": sorted(s.protocols),
                           "summary": s.summary} for s in SCENARIOS], indent=2))
    else:
        print(format_list())
    return 0


def _compat(args: argparse.Namespace) -> int:
    from .compat import (BrokerUnavailable, Target, all_passed, check_broker, find_scenarios,
                         format_table, run_all, to_json)

    if args.list:
        return _compat_list(args.json)
    if args.matrix:
        if args.broker is not None or args.scenario or args.failover is not None:
            print("mqttsession compat: --matrix starts its own brokers and runs every scenario"
                  " (no --broker, no --failover, no --scenario)", file=sys.stderr)
            return 2
        return _compat_matrix(args)
    if args.brokers or args.fast or args.update_readme:
        print("mqttsession compat: --brokers, --fast and --update-readme go with --matrix", file=sys.stderr)
        return 2
    if args.failover is not None and args.broker is None:
        print("mqttsession compat: --failover names another node of the --broker's cluster:"
              " give --broker too", file=sys.stderr)
        return 2
    if args.failover is not None and _same_node(args.broker, args.failover):
        print(f"mqttsession compat: --failover {format_address(*args.failover)} is the --broker"
              " itself: name another node of its cluster", file=sys.stderr)
        return 2
    try:
        scenarios = find_scenarios(args.scenario)
    except KeyError as exc:
        print(f"mqttsession compat: {exc.args[0]} (see --list)", file=sys.stderr)
        return 2
    username = args.username if args.username is not None else os.environ.get(ENV_USERNAME) or None
    password = _password(args)  # (asked for before a broker is started)
    embedded: Any = None
    label = ""
    if args.broker is None:
        from importlib.metadata import version

        from .testing.brokers import amqtt_missing

        unavailable = amqtt_missing("compat")
        if unavailable is not None:
            print(unavailable, file=sys.stderr)
            return 2
        from .testing import BrokerStartError, EmbeddedAmqtt

        if not args.verbose:
            logging.getLogger("amqtt").setLevel(logging.CRITICAL)  # its warnings are not ours
        try:
            embedded = EmbeddedAmqtt().start()
        except BrokerStartError as exc:
            print(f"mqttsession compat: cannot start the embedded amqtt broker: {str(exc).splitlines()[0]}",
                  file=sys.stderr)
            return 2
        host, port = embedded.host, embedded.port
        label = f"embedded amqtt {version('amqtt')}"
    else:
        host, port = args.broker
    try:
        target = Target(host, port, args.protocol, username, password, timeout=args.timeout,
                        failover=args.failover)
        try:
            check_broker(target)
            if args.failover is not None:  # (a dead --failover node is not the broker's fail)
                check_broker(dataclasses.replace(target, host=args.failover[0],
                                                 port=args.failover[1], failover=None))
        except BrokerUnavailable as exc:
            print(f"mqttsession compat: {exc}", file=sys.stderr)
            return 2
        start = time.monotonic()
        results = run_all(target, scenarios, jobs=args.jobs)
        seconds = time.monotonic() - start
    finally:
        if embedded is not None:
            embedded.stop()
    if args.json:
        print(json.dumps(to_json(results, broker=target.address, protocol=args.protocol,
                                 embedded=label or None, seconds=seconds), indent=2))
    else:
        version_name = "MQTT 5" if args.protocol == 5 else "MQTT 3.1.1"
        title = f"mqttsession compat: {target.address}{f' ({label})' if label else ''}, {version_name}"
        print(format_table(results, title, seconds))
    return 0 if all_passed(results) else 1


def _compat_matrix(args: argparse.Namespace) -> int:
    """``compat --matrix``: start each broker this machine has, run every scenario, report; with
    ``--update-readme`` rewrite README.rst's table. Exit code 0 when every broker asked for ran
    (a FAIL is the broker's, reported in the table), 2 when one could not."""
    from .compat import matrix

    names = list(matrix.FAST_BROKERS if args.fast else args.brokers or matrix.BROKERS)
    unknown = [n for n in names if n not in matrix.BROKERS]
    if unknown:
        print(f"mqttsession compat: unknown broker(s) {', '.join(unknown)}; known:"
              f" {', '.join(matrix.BROKERS)}", file=sys.stderr)
        return 2
    if args.update_readme:  # (checked before any broker starts: a run takes minutes)
        try:
            matrix.readme_table(matrix.readme_path())
            if not os.access(matrix.readme_path(), os.W_OK):
                raise PermissionError(f"{matrix.readme_path()}: not writable")
        except (OSError, ValueError) as exc:
            raise _BadArguments(f"--update-readme (a source checkout's README.rst): {exc}") from None
    if not args.verbose:
        logging.getLogger("amqtt").setLevel(logging.CRITICAL)
    runs = matrix.run_matrix(names, jobs=args.jobs, timeout=args.timeout,
                             progress=None if args.json else lambda text: print(text, flush=True))
    if args.json:
        print(json.dumps([{
            "broker": r.name, "version": r.version, "skipped": r.skipped or None,
            "start_seconds": round(r.start_seconds, 2),
            "refused": {str(p): why for p, why in r.refused.items()},
            "results": {str(p): [x.to_json() for x in res] for p, res in r.results.items()},
        } for r in runs], indent=2))
    else:
        print("\n" + matrix.format_text(runs))
    if args.update_readme:
        path = matrix.readme_path()
        matrix.update_readme(path, matrix.format_rst(runs))
        if not args.json:
            print(f"updated {path}")
    return 2 if any(r.skipped for r in runs) else 0


def _brokers(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _jobs(text: str, low: int = 1, high: int = 32, unit: str = "") -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise argparse.ArgumentTypeError(f"expected {low}..{high}{unit}, got {text!r}")
    return int(text)


def _count(text: str) -> int:
    return _jobs(text, 2, 1_000_000, " messages")


def _positive(text: str) -> float:
    with contextlib.suppress(ValueError):
        if 0 < float(text) <= 60:
            return float(text)
    raise argparse.ArgumentTypeError(f"expected seconds in (0, 60], got {text!r}")


# ====================================================================== main

PUBLIC = ("demo", "compat", "inspect")  # the subcommands --help shows; the others are internal


def _password(args: argparse.Namespace) -> str | None:
    """The compat password: ``--password``; asked for with ``--password -`` or
    ``--password-prompt`` (no echo on a terminal, else one line of stdin); else
    ``$MQTTSESSION_PASSWORD``; else none."""
    given: str | None = args.password
    if args.password_prompt or given == "-":
        if given not in (None, "-"):
            raise _BadArguments("--password-prompt and --password PASSWORD: give one of them")
        if sys.stdin.isatty():
            return getpass.getpass("MQTT password: ")
        line = sys.stdin.readline()
        if not line:
            raise _BadArguments("--password-prompt: no password on standard input")
        return line.rstrip("\r\n")
    return given if given is not None else os.environ.get(ENV_PASSWORD) or None


def _parser() -> argparse.ArgumentParser:
    from .compat.scenarios import TOPIC_ROOT

    p = argparse.ArgumentParser(prog="mqttsession", description="Durable MQTT sessions.")
    p.add_argument("--version", action="version", version=f"mqttsession {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    # the metavar lists the public subcommands only: the internal ones stay out of --help
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(PUBLIC) + "}")
    d = sub.add_parser("demo", help="crash a publisher mid-stream, restore it, count deliveries")
    d.add_argument("--broker", type=_split_broker, metavar="HOST:PORT",
                   help="the broker to use (default: start one, see --embedded)")
    d.add_argument("--count", type=_count, default=200, help="messages to send (default 200)")
    d.add_argument("--embedded", choices=("auto", "mosquitto", "amqtt"), default="auto",
                   help="broker to start when --broker is not given (default auto: mosquitto"
                        " if installed, else amqtt in-process, whose 0.12 releases may deliver a"
                        " resent QoS 2 message twice)")
    d.set_defaults(func=_demo)
    c = sub.add_parser("compat", help="check a broker's session behaviour, one row per scenario",
                       description=(
        "Run MQTT session scenarios against a broker with raw packets and print one row each: pass,"
        " FAIL with the reason, or n/a. Exit code 0 when every applicable scenario passed, 1 when"
        " one failed, 2 for a usage error or when the broker cannot be reached, refuses the"
        f" protocol, or does not let the user publish and subscribe under {TOPIC_ROOT}/# (every"
        " scenario's topics; tried first; client ids begin with msc). It never restarts a broker it"
        " did not start, so it does not check that sessions survive a broker restart (the test"
        " suite does, for the brokers it starts)."))
    c.add_argument("--broker", type=_split_broker, metavar="HOST:PORT",
                   help="the broker to check, HOST:PORT or [IPv6]:PORT (default: start an embedded"
                        " amqtt broker)")
    c.add_argument("--failover", type=_split_broker, metavar="HOST:PORT",
                   help="another node of the --broker's cluster (not the --broker itself): scenario"
                        " failover-resume makes a session on --broker and resumes it there (n/a"
                        " without)")
    c.add_argument("--protocol", type=int, choices=(4, 5), default=4,
                   help="4 = MQTT 3.1.1 (default), 5 = MQTT 5")
    c.add_argument("--username", help=f"user name for every CONNECT (default: ${ENV_USERNAME})")
    c.add_argument("--password", metavar="PASSWORD",
                   help=f"password for every CONNECT; - asks for it (as --password-prompt does)."
                        f" Better kept off the command line: ${ENV_PASSWORD} is read when"
                        " neither is given")
    c.add_argument("--password-prompt", action="store_true",
                   help="ask for the password (no echo on a terminal; otherwise one line of"
                        " standard input is read)")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--list", action="store_true", help="list the scenarios and exit")
    c.add_argument("--scenario", action="append", metavar="NAME",
                   help="run only this scenario (repeatable)")
    c.add_argument("--timeout", type=_positive, default=3.0, metavar="SECONDS",
                   help="wait for a packet that should come (default 3)")
    c.add_argument("--jobs", type=_jobs, default=4, metavar="N",
                   help="scenarios run at a time, 1..32 (default 4)")
    c.add_argument("--matrix", action="store_true",
                   help="start each broker this machine has (mosquitto, amqtt, aedes, ejabberd,"
                        " rabbitmq, activemq) on 127.0.0.1, run every scenario with MQTT 3.1.1 and"
                        " 5, and report; a broker that cannot run here is named with the reason")
    c.add_argument("--brokers", type=_brokers, metavar="NAME,...",
                   help="with --matrix: only these brokers")
    c.add_argument("--fast", action="store_true",
                   help="with --matrix: only the fast brokers (mosquitto, amqtt, aedes)")
    c.add_argument("--update-readme", action="store_true",
                   help="with --matrix: rewrite the table between the broker-matrix markers of"
                        " README.rst from this run")
    c.set_defaults(func=_compat)
    i = sub.add_parser("inspect", help="show a saved session (a state file, a gateway directory,"
                                       " or - for stdin)",
                       description=(
        "Show a saved session. FILE is a SessionStateFile: its snapshot, its journal (FILE.journal)"
        " and its disk queue (FILE.queue/) are read, as restore_session would, and nothing is"
        " written. A Gateway's directory: its sessions are listed, read from its shared log"
        " (nothing locked or written). With - the save_session() text is read from standard input"
        " alone: no journal, no disk queue."))
    i.add_argument("file", metavar="FILE")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=_inspect)
    # internal: the demo's child process. No help= (help=argparse.SUPPRESS prints
    # "==SUPPRESS==" before Python 3.14): argparse lists only subcommands given one
    h = sub.add_parser("_demo-publisher")
    h.add_argument("--broker", type=_split_broker, required=True)
    h.add_argument("--state", required=True)
    h.add_argument("--first", type=int, required=True)
    h.add_argument("--last", type=int, required=True)
    h.add_argument("--crash", action="store_true")
    h.add_argument("--client-id", required=True)
    h.add_argument("--topic", required=True)
    h.set_defaults(func=_demo_publisher)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # (a reader gone: its BrokenPipeError here, not at the exit)
        return code
    except (StateError, _BadArguments) as exc:
        print(f"mqttsession: {exc}", file=sys.stderr)
        return 2
    except MQTTSessionError as exc:
        print(f"mqttsession: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # (its reader left, as ``| head`` does: the rest is not wanted)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no error at exit)
        return 141
