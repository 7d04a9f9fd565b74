"""Crash-test child: a ``Gateway`` of N sessions, restored from its directory, publishing.

argv: sessions host port state_dir per_session first [threads]. Session ``i`` is
``gw-crash-{i}`` (clean_session False) and publishes to ``gwcrash/{i}`` the numbers
``i * 1_000_000 + n`` for n in first .. first + per_session - 1, QoS 1 + n % 2 (so an even
number is QoS 1, an odd one QoS 2). ``threads`` publishing threads (4) each own the sessions
``i % threads == t`` and go round robin over them; 0: ONE thread publishes a message of every
session at a time with ``Gateway.publish_many`` (one fdatasync for all of them).

Prints, in this order: "held <total> <count of session 0> <count of session 1> ..." (the
messages each restored session holds before it connects), "connected <seconds> <failed>",
then "ok <number>" each time a publish_data returned (the message is durable: kill -9 cannot
lose it; after a ``publish_many``, one for each of its messages), and after a run not killed, once every session is flushed: "done <flushed> <left>".
"""

from __future__ import annotations

import sys
import threading
import time

from mqttsession.gateway import Gateway

#: Connection attempts a second: 200 sessions connect in ~0.1 s (the default is 200 a second).
CONNECT_RATE = 2000.0
_out_lock = threading.Lock()


def say(line: str) -> None:
    """One whole line to stdout at once (one write(2) of < PIPE_BUF bytes: kill -9 cannot
    leave half a line), flushed so the test sees it."""
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main() -> None:
    """Restore, connect and publish; flush and say "done" unless killed first."""
    sessions, host, port, state_dir, per_session, first = sys.argv[1:7]
    n_sessions, n_per, start = int(sessions), int(per_session), int(first)
    n_threads = int(sys.argv[7]) if len(sys.argv) > 7 else 4
    with Gateway(state_dir, connect_rate=CONNECT_RATE) as gw:
        clients = []
        for i in range(n_sessions):
            c = gw.client(f"gw-crash-{i}", clean_session=False)
            c.config("ReconnectDelayMax=1")
            clients.append(c)
        held = [len(c.outgoing_messages) for c in clients]
        say(f"held {sum(held)} " + " ".join(map(str, held)))
        t0 = time.monotonic()
        failed = gw.connect_all(host, int(port), timeout=20)
        say(f"connected {time.monotonic() - t0:.2f} {len(failed)}")
        if failed:  # the sessions still reconnect; the test sees it in the log
            print(f"connect failed: {sorted(failed.items())[:5]}", file=sys.stderr)

        def publish(t: int) -> None:
            mine = [(i, clients[i]) for i in range(t, n_sessions, n_threads)]
            for n in range(start, start + n_per):
                for i, c in mine:
                    number = i * 1_000_000 + n
                    c.publish_data(f"gwcrash/{i}", 1 + n % 2, str(number).encode())
                    say(f"ok {number}")

        def publish_many() -> None:
            for n in range(start, start + n_per):
                numbers = [i * 1_000_000 + n for i in range(n_sessions)]
                gw.publish_many([(c, f"gwcrash/{i}", 1 + n % 2, str(numbers[i]).encode())
                                 for i, c in enumerate(clients)])
                for number in numbers:
                    say(f"ok {number}")

        threads = [threading.Thread(target=publish, args=(t,), name=f"publisher-{t}")
                   for t in range(n_threads)] or [threading.Thread(target=publish_many)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        deadline = time.monotonic() + 60
        flushed = all(c.flush(max(0.0, deadline - time.monotonic())) for c in clients)
        left = sum(len(c.outgoing_messages) for c in clients)
        say(f"done {flushed} {left}")


if __name__ == "__main__":
    main()
