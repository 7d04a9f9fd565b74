"""A device gateway: many device identities in one process, readings forwarded in batches.

Each device has its own MQTT session (client id, durable state) in ONE Gateway directory. The
forwarding loop collects a reading of every device and publishes them with one
``gw.publish_many`` call: under SessionSync=always one fdatasync makes the whole batch durable
before the call returns (publish_data in a loop would pay one a message). A second gateway on
the same directory, after the broker was away, sends what the first one stored.
Run: python examples/device_gateway.py [--broker HOST:PORT]
"""

import os
import tempfile
import time

from _common import Tally, broker, parse_args

from mqttsession import Gateway

DEVICES = 50
ROUNDS = 4


def forward(gw: Gateway, round_no: int) -> list[int]:
    """One reading of every device (here made up), all published together."""
    readings = [(f"plc-{n}", 20.0 + n / 10 + round_no) for n in range(DEVICES)]
    devices = gw.clients
    return gw.publish_many([(devices[dev], f"example/plant/{dev}", 1, f"{dev}={value:.1f}")
                            for dev, value in readings])


def main(host: str, port: int, state_dir: str) -> None:
    tally = Tally(host, port, "example/plant/#")
    with Gateway(state_dir) as gw:
        for n in range(DEVICES):
            gw.client(f"plc-{n}", clean_session=False).config("SessionSync=always")
        assert gw.connect_all(host, port) == {}, "a device session did not connect"
        t0 = time.perf_counter()
        for r in range(ROUNDS):
            forward(gw, r)  # durable on return: a kill -9 now loses none of them
        took = time.perf_counter() - t0
        assert all(c.flush(10) for c in gw.clients.values())
    got = tally.wait(DEVICES * ROUNDS)
    print(f"1. {len(got)} readings of {DEVICES} devices arrived ({ROUNDS} batches stored in"
          f" {took * 1000:.0f} ms, one fdatasync each)")
    assert len(got) == DEVICES * ROUNDS, "a reading did not arrive"

    # 2. Stored while the broker is unreachable (never connected), sent by the next gateway.
    with Gateway(state_dir) as gw:
        for n in range(DEVICES):
            gw.client(f"plc-{n}", clean_session=False).config("SessionSync=always")
        forward(gw, ROUNDS)
        waiting = sum(len(c.outgoing_messages) for c in gw.clients.values())
        print(f"2. offline: {waiting} readings wait in {state_dir}")
    with Gateway(state_dir) as gw:
        for n in range(DEVICES):
            gw.client(f"plc-{n}", clean_session=False)
        assert gw.connect_all(host, port) == {}
        assert all(c.flush(10) for c in gw.clients.values())
    got = tally.wait(DEVICES * (ROUNDS + 1))
    print(f"3. a new gateway on the directory sent them: {len(got)} readings in all")
    assert len(got) == DEVICES * (ROUNDS + 1), "a stored reading did not arrive"
    tally.close()


if __name__ == "__main__":
    args = parse_args(__doc__ or "")
    with broker(args) as (host, port), tempfile.TemporaryDirectory() as tmp:
        main(host, port, os.path.join(tmp, "gateway"))
