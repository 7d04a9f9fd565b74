"""Crash-test child: a session subscriber with a state file that logs every delivery.

Appends "S <pid> 0" at start, "B <n> <qos>" before and "E <n> <qos>" after handling each on_message_in (os.write on
an O_APPEND file descriptor: kill -9 cannot lose a line that was written).
argv: state_file host port log_file [gateway]; with "gateway" the session is one of a
``Gateway`` on the directory state_file (its loop, its shared log, its sync thread).
"""

import os
import sys
import logging
import threading

from mqttsession import Client, Gateway


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    state, host, port, log_file = sys.argv[1:5]
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, f"S {os.getpid()} 0\n".encode())  # a new process: a new segment of the log

    def on_message_in(e: object) -> None:
        n, qos = e.message.decode(), e.qos  # type: ignore[attr-defined]
        os.write(fd, f"B {n} {qos}\n".encode())
        os.write(fd, f"E {n} {qos}\n".encode())

    if sys.argv[5:] == ["gateway"]:
        gw = Gateway(state)  # kept open until the kill
        c = gw.client("crash-subscriber", clean_session=False)  # restored from the store
    else:
        c = Client(client_id="crash-subscriber", clean_session=False)
        c.config(f"SessionStateFile={state}")
        c.restore_session("")
    c.config("ReconnectDelayMax=1")
    c.on_message_in = on_message_in
    subscribed = threading.Event()
    c.on_subscribed = lambda _e: subscribed.set()
    c.connect(host, int(port), timeout=10)
    c.subscribe("crash/sub", 2)
    subscribed.wait(10)  # the broker has the subscription before the feed starts (SUBACK)
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    threading.Event().wait()


main()
