"""Run the amqtt broker (MQTT 3.1.1) as a process: the body of :class:`AmqttProcess`.

    python -m mqttsession.testing.amqtt_runner --config amqtt.yaml [--ready-file F] [--parent-pid P] [--debug]

Unlike amqtt's own ``amqtt`` script this runner

* shuts the broker down cleanly (``await broker.shutdown()``) on SIGINT *and* SIGTERM, with handlers
  installed on the loop, so it works even when started with SIGINT ignored (``&`` in a shell);
* writes ``--ready-file`` (JSON ``{"pid": ..., "port": ...}``) once the listener is bound;
* exits by itself when ``--parent-pid`` is no longer its parent (the test run died).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger("mqttsession.testing.amqtt_runner")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mqttsession.testing.amqtt_runner")
    parser.add_argument("--config", required=True, help="amqtt YAML configuration file")
    parser.add_argument("--ready-file", help="write {pid, port} JSON here once the broker listens")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is no longer our parent")
    parser.add_argument("--debug", action="store_true", help="log at DEBUG level (every packet)")
    return parser.parse_args(argv)


def _load_config(path: str) -> dict[str, Any]:
    from amqtt.utils import read_yaml_config  # noqa: PLC0415

    config = read_yaml_config(path)
    if not isinstance(config, dict):
        raise SystemExit(f"invalid amqtt configuration file: {path}")
    return config


def _write_ready(path: str, port: int) -> None:
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "port": port}), encoding="utf-8")
    os.replace(tmp, target)  # atomic: the parent never reads a half-written file


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if os.getppid() != parent_pid:
            logger.warning("parent process %d is gone; shutting down", parent_pid)
            stop.set()
            return
        await asyncio.sleep(0.5)


async def _serve(args: argparse.Namespace) -> int:
    from amqtt.broker import Broker  # noqa: PLC0415

    config = _load_config(args.config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    broker = Broker(config)  # inside the running loop, as amqtt expects
    try:
        await broker.start()
    except Exception:
        logger.exception("broker failed to start")
        return 1
    port: int = broker._servers["default"].instance.sockets[0].getsockname()[1]  # noqa: SLF001
    logger.info("amqtt broker pid %d listening on 127.0.0.1:%d", os.getpid(), port)
    if args.ready_file:
        _write_ready(args.ready_file, port)

    watcher = asyncio.create_task(_watch_parent(args.parent_pid, stop)) if args.parent_pid else None
    await stop.wait()
    logger.info("shutting down")
    if watcher is not None:
        watcher.cancel()
    await broker.shutdown()
    logger.info("broker stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("transitions").setLevel(logging.WARNING)  # state-machine chatter
    logging.getLogger("asyncio").setLevel(logging.INFO)
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
