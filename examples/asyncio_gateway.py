"""An asyncio gateway: sensor readings in, cloud messages out, through a durable session.

The gateway's AsyncSession keeps its session in a state file: what it publishes is on disk before
publish() returns, so messages published while the broker is unreachable (or left unacknowledged
by a killed process) go out when the gateway starts again. No call blocks the event loop.
Run: python examples/asyncio_gateway.py [--broker HOST:PORT]
"""

import asyncio
import os
import tempfile

from _common import broker, parse_args

from mqttsession import AsyncSession, Options

GATEWAY_ID = "example-asyncio-gateway"
READINGS = 5


async def gateway(options: Options, state_file: str, ready: asyncio.Event) -> None:
    """Forward each sensor reading to the cloud topic, with QoS 2."""
    async with AsyncSession(options, client_id=GATEWAY_ID, state_file=state_file) as gw:
        await gw.subscribe("example/sensors/+", 1)
        ready.set()
        forwarded = 0
        async for msg in gw.messages():
            sensor = msg.topic.rsplit("/", 1)[-1]
            await gw.publish(f"example/cloud/{sensor}", f"{sensor}={msg.message.decode()}", 2)
            forwarded += 1
            if forwarded == READINGS:
                break
        await gw.flush(10)


async def main(address: str, state_file: str) -> None:
    options = Options(address=address, request_timeout_seconds=10.0)
    async with AsyncSession(options) as cloud:
        await cloud.subscribe("example/cloud/#", 2)

        # 1. The gateway forwards readings while connected.
        ready = asyncio.Event()
        task = asyncio.create_task(gateway(options, state_file, ready))
        await ready.wait()
        async with AsyncSession(options) as sensors:
            for n in range(READINGS):
                await sensors.publish(f"example/sensors/s{n}", f"{20 + n}.5", 1)
        await task
        got = [await cloud.receive(10) for _ in range(READINGS)]
        print("1. the cloud received:", sorted(m.message.decode() for m in got if m))
        assert all(got), "a forwarded reading did not arrive"

        # 2. Offline: the gateway publishes into its state file, without a broker connection.
        gw = await AsyncSession.create(options, client_id=GATEWAY_ID, state_file=state_file,
                                       connect=False)
        for text in ("offline reading 1", "offline reading 2"):
            await gw.publish("example/cloud/buffered", text, 1)
        print(f"2. {len(gw.client.outgoing_messages)} messages wait in {state_file}")
        await gw.close()

        # 3. A new gateway session restores the file and sends them.
        async with await AsyncSession.create(options, client_id=GATEWAY_ID,
                                             state_file=state_file) as gw:
            await gw.flush(10)
        buffered = [await cloud.receive(10) for _ in range(2)]
        print("3. the cloud received:", [m.message.decode() for m in buffered if m])
        assert all(buffered), "a buffered message did not arrive"


if __name__ == "__main__":
    args = parse_args(__doc__ or "")
    with broker(args) as (host, port), tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(f"{host}:{port}", os.path.join(tmp, "gateway.session")))
