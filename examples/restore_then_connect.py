"""IPWorks restore procedure 2: the server's state is known to be kept.

Set client_id, call restore_session(saved), then connect(). With a SessionStateFile the file is
read instead and kept current after every change, so even a killed process restarts this way.
Run: python examples/restore_then_connect.py [--broker HOST:PORT]
"""

import os
import tempfile

from _common import Tally, broker, parse_args

from mqttsession import Client

args = parse_args(__doc__ or "")
with broker(args) as (host, port), tempfile.TemporaryDirectory() as tmp:
    state_file = os.path.join(tmp, "gateway.session")
    tally = Tally(host, port, "example/events")

    gw = Client(client_id="example-gateway-2", clean_session=False)
    gw.config(f"SessionStateFile={state_file}")
    gw.restore_session("")  # no file yet: an empty session
    for n in range(3):  # durable before each call returns, connected or not
        gw.publish_message("example/events", 2, f"event {n}")
    print(f"{len(gw.outgoing_messages)} messages in the session file; the process 'dies' here")
    del gw  # no disconnect, no save: the state file already holds everything

    gw2 = Client(client_id="example-gateway-2")
    gw2.config(f"SessionStateFile={state_file}")
    gw2.restore_session("")  # reads the file; sets clean_session False
    print(f"restored {len(gw2.outgoing_messages)} messages; connecting")
    gw2.connect(host, port)
    gw2.flush(10)
    got = tally.wait(3)
    gw2.close()
    tally.close()
    print(f"the subscriber received: {got}")
    assert sorted(got) == [f"event {n}" for n in range(3)], got
