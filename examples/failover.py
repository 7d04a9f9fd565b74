"""Failover: servers tried in turn (FailoverServers), and on_connected naming the one that answered.

connect() is given a server where nothing listens; the FailoverServers list names the real
broker, so connect() goes on to it. Without --broker this starts two mosquittos and stops the
first mid-run: the automatic reconnect moves to the second by itself, and the messages published
meanwhile (held in the session) go there.
Run: python examples/failover.py [--broker HOST:PORT]
"""

import contextlib
import threading

from _common import Tally, broker, parse_args

from mqttsession import Client
from mqttsession.events import ConnectedEvent
from mqttsession.testing import MosquittoBroker
from mqttsession.testing.brokers import find_mosquitto, free_port

args = parse_args(__doc__ or "")
connected = threading.Condition()
servers: list[str] = []


def on_connected(event: ConnectedEvent) -> None:
    with connected:
        servers.append(event.server)
        connected.notify_all()
    print(f"on_connected: {event.server} (status {event.status_code},"
          f" SessionPresent={event.session_present})")


with contextlib.ExitStack() as stack:
    if args.broker or not find_mosquitto():
        host, port = stack.enter_context(broker(args))
        second = None
    else:  # two brokers of our own; the first is stopped mid-run
        first_broker = stack.enter_context(MosquittoBroker())
        second = stack.enter_context(MosquittoBroker())
        host, port = first_broker.host, first_broker.port
        print(f"(started mosquitto on {first_broker.address} and {second.address})")
    dead = free_port()  # nothing listens there
    tally = Tally(host, port, "example/failover")

    gw = Client(client_id="example-failover", clean_session=False)
    gw.config("ReconnectDelayMin=1")
    gw.config(f"FailoverServers={host}:{port}" + (f",{second.address}" if second else ""))
    gw.on_connected = on_connected
    gw.connect("127.0.0.1", dead)  # refused there; the list's next server answers
    gw.publish_message("example/failover", 1, "via the first server that answered")
    gw.flush(10)
    print(f"the subscriber received: {tally.wait(1)}")
    if second is not None:
        tally2 = Tally(second.host, second.port, "example/failover")
        first_broker.kill()  # no DISCONNECT: the connection is simply gone
        gw.publish_message("example/failover", 1, "published while failing over")
        with connected:
            connected.wait_for(lambda: len(servers) == 2, 30)
        gw.flush(10)
        print(f"the second broker's subscriber received: {tally2.wait(1)}")
        assert servers[1] == second.address, servers
        tally2.close()
    print(f"ConnectedServer: {gw.config('ConnectedServer')}")
    gw.close()
    tally.close()
