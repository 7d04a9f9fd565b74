"""Test infrastructure for mqttsession: real brokers on loopback, a packet-level MQTT proxy,
pytest fixtures (``pytest_plugins = ["mqttsession.testing.pytest_plugin"]``), and disk faults
injected into the state file's writes (``mqttsession.testing.faults``, which needs pytest).

Importing this package does not import pytest; the CLI and demos use :class:`EmbeddedAmqtt`.
"""

from mqttsession.testing.brokers import (
    LOCALHOST,
    AmqttProcess,
    AnyBroker,
    BrokerStartError,
    EmbeddedAmqtt,
    MosquittoBroker,
    find_mosquitto,
    free_port,
)
from mqttsession.testing.proxy import MQTTProxy, PacketRecord

__all__ = [
    "LOCALHOST",
    "AmqttProcess",
    "AnyBroker",
    "BrokerStartError",
    "EmbeddedAmqtt",
    "MQTTProxy",
    "MosquittoBroker",
    "PacketRecord",
    "find_mosquitto",
    "free_port",
]
