"""MQTT 5 session expiry: decide with the client's own clock whether a saved session is still
worth restoring (session_expired), and see what the broker says (SessionPresent).

Run: python examples/mqtt5_expiry.py [--broker HOST:PORT]   (needs an MQTT 5 broker)
"""

import time

from _common import broker, parse_args

from mqttsession import Client, session_expired

args = parse_args(__doc__ or "", need_v5=True)
with broker(args) as (host, port):
    for away in (1.0, 3.5):
        c = Client(client_id="example-expiry", clean_session=False, protocol_version=5)
        c.config("SessionExpInterval=2")  # the broker keeps the session 2 s after we leave
        c.connect(host, port)
        c.subscribe("example/expiry", 1)
        c.disconnect()
        saved = c.save_session()
        time.sleep(away)
        print(f"away {away} s: session_expired -> {session_expired(saved)}")
        c2 = Client(client_id="example-expiry", protocol_version=5)
        c2.config("SessionExpInterval=2")
        c2.restore_session(saved)  # an expired session starts clean (Clean Start = 1)
        c2.connect(host, port)
        print(f"           broker SessionPresent -> {c2.config('SessionPresent')}")
        c2.disconnect()
