"""Crash-test child: restore the session from a state file, publish a numbered range.

Prints "R <n>" after publish_* returned for n (the message is then durable), "DONE" at the end.
argv: state_file host port first last [flush]. Environment: CRASH_SPOOL=1 keeps at most 10
messages in memory (the rest in the disk queue, 4 KiB segments); CRASH_OFFLINE=1 publishes
without connecting, as fast as it can; CRASH_THREADS=N publishes from N threads (thread t the
numbers n with n % N == t: their publishes share fdatasyncs).
"""

import os
import sys
import threading
import time

from mqttsession import Client


def main() -> None:
    state, host, port, first, last = sys.argv[1:6]
    finish = len(sys.argv) > 6
    c = Client(client_id="crash-publisher", clean_session=False)
    c.config(f"SessionStateFile={state}")
    c.config("MaxInflight=20")
    c.config("ReconnectDelayMax=1")
    if os.environ.get("CRASH_SPOOL"):
        c.config("QueueInMemory=10")
        c.config("QueueSegmentBytes=4096")
    offline = bool(os.environ.get("CRASH_OFFLINE"))
    c.restore_session("")
    out = sys.stdout
    if offline:
        out.write("UP\n")
        out.flush()
    else:
        c.connect(host, int(port), timeout=10)
    threads = int(os.environ.get("CRASH_THREADS", "1"))
    printing = threading.Lock()

    def publish(t: int) -> None:
        for n in range(int(first) + t, int(last), threads):
            c.publish_message("crash/pub", 1 + n % 2, str(n))
            with printing:
                out.write(f"R {n}\n")
                out.flush()
            if not offline:
                time.sleep(0.002)  # a steady stream, so that kills land mid-stream
    workers = [threading.Thread(target=publish, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if finish:
        ok = c.flush(30)
        c.disconnect()
        out.write(f"DONE {ok} {len(c.outgoing_messages)}\n")
        out.flush()


main()
