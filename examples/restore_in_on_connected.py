"""IPWorks restore procedure 1: the server's state is unknown.

Connect with clean_session False; in on_connected read config("SessionPresent") and, when the
server kept the session, call restore_session(saved) right there: the session resumes on that
same connection. Run: python examples/restore_in_on_connected.py [--broker HOST:PORT]
"""

from _common import Tally, broker, parse_args

from mqttsession import Client

args = parse_args(__doc__ or "")
with broker(args) as (host, port):
    tally = Tally(host, port, "example/telemetry")

    # A gateway connects once (the broker now has its session), disconnects, then keeps
    # publishing while offline: the messages wait in its session, which it saves.
    gw = Client(client_id="example-gateway", clean_session=False)
    gw.connect(host, port)
    gw.disconnect()
    for n in range(3):
        gw.publish_message("example/telemetry", 1 + n % 2, f"reading {n}")
    saved = gw.save_session()
    print(f"saved a session holding {len(gw.outgoing_messages)} unsent messages")

    # Later, a new process (here: a new Client) with the same client id.
    gw2 = Client(client_id="example-gateway", clean_session=False)

    def on_connected(e: object) -> None:
        present = gw2.config("SessionPresent")
        print(f"on_connected: SessionPresent={present}")
        if present == "True":
            gw2.restore_session(saved)  # resumes on this connection

    gw2.on_connected = on_connected
    gw2.connect(host, port)
    gw2.flush(10)
    got = tally.wait(3)
    gw2.disconnect()
    tally.close()
    print(f"the subscriber received: {got}")
    assert sorted(got) == [f"reading {n}" for n in range(3)], got
