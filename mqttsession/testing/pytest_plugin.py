"""pytest fixtures for real-broker tests: ``pytest_plugins = ["mqttsession.testing.pytest_plugin"]``.

Fixtures
--------
``mosquitto`` (module)
    A started non-persistent :class:`MosquittoBroker` (``broker_conf/mosquitto.conf``).
``mosquitto_factory`` (function)
    ``mosquitto_factory(conf_template="mosquitto.conf", persistence_dir=None, *, start=True, **kw)``
    returns a :class:`MosquittoBroker` (started unless ``start=False``); all are stopped at teardown.
``amqtt_broker`` (module)
    A started :class:`AmqttProcess` (``broker_conf/amqtt.yaml``).
``amqtt_factory`` (function)
    ``amqtt_factory(conf_template="amqtt.yaml", *, start=True, **kw)`` -> :class:`AmqttProcess`.
``embedded_amqtt`` (function)
    A started :class:`EmbeddedAmqtt`; the ``amqtt`` logger is set to INFO so its log has connections.
``aedes_broker`` (module)
    A started in-memory :class:`AedesBroker` (npm aedes run by Node.js, MQTT 3.1.1).
``aedes_cluster`` (function)
    A started :class:`AedesCluster`: a Redis and two aedes nodes sharing it (``nodes[0]``,
    ``nodes[1]``).
``mqtt_proxy_factory`` (function)
    ``mqtt_proxy_factory(upstream)`` -> a started :class:`MQTTProxy` in front of ``upstream`` (a
    broker, or a ``(host, port)`` tuple); all are stopped at teardown.

When the mosquitto binary is missing, the mosquitto fixtures skip the test, unless the environment
variable ``CI`` is set (to anything but ``""``, ``0``, ``false``, ``no``, ``off``): then they fail it.
The aedes fixtures skip when Node.js is absent; when aedes' npm packages are missing they first try
``npm ci --offline`` (from npm's cache), then skip saying ``npm ci --prefix brokers/aedes`` (fail
under ``CI``), and likewise for a missing ``redis-server``. The amqtt fixtures skip when amqtt or
PyYAML (``pip install "mqttsession[demo]"``) is not installed (fail under ``CI``). The plugin runs
on pytest 7.4 and newer.

Tests using a broker fixture get the ``integration`` marker (and ``mosquitto`` for mosquitto ones)
automatically. When a test fails, the logs of the brokers and proxies it used are added to its
report, as sections named after each broker (for a broker shared with earlier tests, only what it
logged since the last of them finished).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import weakref
from collections.abc import Generator, Iterator
from typing import Any, Protocol, runtime_checkable

import pytest

from mqttsession.testing.brokers import (
    AMQTT_EXTRA,
    AmqttProcess,
    AnyBroker,
    EmbeddedAmqtt,
    MosquittoBroker,
    _ProcessBroker,
    amqtt_absent,
    find_mosquitto,
)
from mqttsession.testing.node_brokers import (
    AedesBroker,
    AedesCluster,
    aedes_dir,
    aedes_unavailable,
    find_node,
)
from mqttsession.testing.proxy import MQTTProxy

__all__ = [
    "AmqttFactory",
    "aedes_broker",
    "aedes_cluster",
    "MosquittoFactory",
    "ProxyFactory",
    "amqtt_broker",
    "amqtt_factory",
    "embedded_amqtt",
    "in_ci",
    "mosquitto",
    "mosquitto_factory",
    "mqtt_proxy_factory",
    "require_aedes",
    "require_mosquitto",
]

_MOSQUITTO_FIXTURES = frozenset({"mosquitto", "mosquitto_factory"})
_AEDES_FIXTURES = frozenset({"aedes_broker", "aedes_cluster"})
_BROKER_FIXTURES = _MOSQUITTO_FIXTURES | _AEDES_FIXTURES | {"amqtt_broker", "amqtt_factory", "embedded_amqtt", "mqtt_proxy_factory"}
_MAX_SECTION_CHARS = 60_000


@runtime_checkable
class LogSource(Protocol):
    """Anything whose log can be attached to a failing test's report."""

    def describe(self) -> str: ...

    def log_text(self) -> str: ...


@runtime_checkable
class _HasLogSources(Protocol):
    def log_sources(self) -> list[LogSource]: ...


# ------------------------------------------------------------------------------------------------
# helpers


def in_ci() -> bool:
    """True when the environment variable CI is set to a true-ish value."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def require_mosquitto() -> str:
    """The mosquitto binary's path; skip the test if missing (fail it instead under CI)."""
    binary = find_mosquitto()
    if binary is None:
        message = "mosquitto binary not found (install mosquitto, or set MOSQUITTO_BIN)"
        if in_ci():
            pytest.fail(f"{message}; CI is set, so this is an error, not a skip", pytrace=False)
        pytest.skip(message)
    return binary


def require_amqtt() -> None:
    """Skip the test when amqtt or PyYAML (the ``demo`` extra) is not installed, saying how to
    get it (fail it instead under CI)."""
    absent = amqtt_absent()
    if absent is not None:
        message = f"the amqtt broker needs {absent}, which is not installed ({AMQTT_EXTRA})"
        if in_ci():
            pytest.fail(f"{message}; CI is set, so this is an error, not a skip", pytrace=False)
        pytest.skip(message)


_NPM_CI_TRIED: dict[str, bool] = {}


def _try_npm_ci_offline() -> None:
    """``npm ci --offline`` in the aedes folder, once per run: it works when npm's cache already
    holds the locked packages (a machine that installed them before), and touches no network."""
    folder = str(aedes_dir())
    if folder in _NPM_CI_TRIED:
        return
    npm = shutil.which("npm")
    if npm is None or not (aedes_dir() / "package-lock.json").is_file():
        _NPM_CI_TRIED[folder] = False
        return
    try:
        done = subprocess.run([npm, "ci", "--offline", "--no-audit", "--no-fund", "--prefix", folder],  # noqa: S603
                              capture_output=True, timeout=180, check=False)
        _NPM_CI_TRIED[folder] = done.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        _NPM_CI_TRIED[folder] = False


def require_aedes(*, redis: bool = False) -> None:
    """Skip the test when Node.js is absent; when aedes' packages (or ``redis-server``) are missing,
    say how to install them (skip, or fail under CI)."""
    if find_node() is None:
        pytest.skip("Node.js not found: the aedes broker needs node 20+ (set NODE_BIN or install nodejs)")
    reason = aedes_unavailable(redis=redis)
    if reason is not None and "npm ci" in reason:
        _try_npm_ci_offline()
        reason = aedes_unavailable(redis=redis)
    if reason is not None:
        if in_ci():
            pytest.fail(f"{reason}; CI is set, so this is an error, not a skip", pytrace=False)
        pytest.skip(reason)


class MosquittoFactory:
    """Starts :class:`MosquittoBroker` instances and stops them all at teardown."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.brokers: list[MosquittoBroker] = []

    def __call__(
        self,
        conf_template: str | os.PathLike[str] = "mosquitto.conf",
        persistence_dir: str | os.PathLike[str] | None = None,
        *,
        start: bool = True,
        **kwargs: Any,
    ) -> MosquittoBroker:
        kwargs.setdefault("mosquitto_bin", self.binary)
        broker = MosquittoBroker(conf_template, persistence_dir, **kwargs)
        self.brokers.append(broker)
        if start:
            broker.start()
        return broker

    def log_sources(self) -> list[LogSource]:
        return list(self.brokers)

    def close(self) -> None:
        _stop_all(self.brokers)


class AmqttFactory:
    """Starts :class:`AmqttProcess` instances and stops them all at teardown."""

    def __init__(self) -> None:
        self.brokers: list[AmqttProcess] = []

    def __call__(
        self, conf_template: str | os.PathLike[str] = "amqtt.yaml", *, start: bool = True, **kwargs: Any
    ) -> AmqttProcess:
        broker = AmqttProcess(conf_template, **kwargs)
        self.brokers.append(broker)
        if start:
            broker.start()
        return broker

    def log_sources(self) -> list[LogSource]:
        return list(self.brokers)

    def close(self) -> None:
        _stop_all(self.brokers)


class ProxyFactory:
    """Starts :class:`MQTTProxy` instances in front of brokers and stops them all at teardown."""

    def __init__(self) -> None:
        self.proxies: list[MQTTProxy] = []

    def __call__(self, upstream: AnyBroker | AedesBroker | tuple[str, int],
                 **kwargs: Any) -> MQTTProxy:
        if isinstance(upstream, tuple):
            host, port = upstream
        else:
            host, port = upstream.host, upstream.port
        proxy = MQTTProxy(host, port, **kwargs)
        self.proxies.append(proxy)
        proxy.start()
        return proxy

    def log_sources(self) -> list[LogSource]:
        return list(self.proxies)

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.stop()


def _stop_all(brokers: list[MosquittoBroker] | list[AmqttProcess]) -> None:
    errors: list[BaseException] = []
    for broker in brokers:
        try:
            broker.stop()
        except Exception as exc:  # noqa: BLE001 - stop the others, then report
            errors.append(exc)
            broker.kill()
    if errors:
        raise errors[0]


# ------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def mosquitto() -> Iterator[MosquittoBroker]:
    """A non-persistent mosquitto on 127.0.0.1, shared by the tests of a module."""
    broker = MosquittoBroker("mosquitto.conf", mosquitto_bin=require_mosquitto())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_factory() -> Iterator[MosquittoFactory]:
    """Start mosquitto brokers with any configuration; all are stopped at teardown."""
    factory = MosquittoFactory(require_mosquitto())
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def amqtt_broker() -> Iterator[AmqttProcess]:
    """amqtt (MQTT 3.1.1) as a separate process on 127.0.0.1, shared by the tests of a module."""
    require_amqtt()
    broker = AmqttProcess()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def amqtt_factory() -> Iterator[AmqttFactory]:
    """Start amqtt broker processes; all are stopped at teardown."""
    require_amqtt()
    factory = AmqttFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def embedded_amqtt() -> Iterator[EmbeddedAmqtt]:
    """amqtt running in this process (asyncio loop in a daemon thread)."""
    require_amqtt()
    # INFO, not DEBUG: amqtt's records also reach pytest's own "Captured log" sections.
    broker = EmbeddedAmqtt(log_level=logging.INFO)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def aedes_broker() -> Iterator[AedesBroker]:
    """An in-memory aedes node (MQTT 3.1.1) on 127.0.0.1, shared by the tests of a module."""
    require_aedes()
    broker = AedesBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()


@pytest.fixture
def aedes_cluster() -> Iterator[AedesCluster]:
    """Two aedes nodes sharing one redis-server, all on 127.0.0.1 free ports."""
    require_aedes(redis=True)
    cluster = AedesCluster(2)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def mqtt_proxy_factory() -> Iterator[ProxyFactory]:
    """Put :class:`MQTTProxy` instances in front of brokers; all are stopped at teardown."""
    factory = ProxyFactory()
    try:
        yield factory
    finally:
        factory.close()


# ------------------------------------------------------------------------------------------------
# hooks

# Length of each broker's log when the last test that used it finished.
_LOG_MARKS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too so that the plugin works in projects that do not declare them.
    config.addinivalue_line("markers", "integration: talks to a real broker over loopback")
    config.addinivalue_line("markers", "mosquitto: needs the mosquitto binary")
    config.addinivalue_line("markers", "aedes: needs Node.js and the aedes broker (brokers/aedes)")


@pytest.hookimpl(tryfirst=True)  # before -m deselection looks at the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _BROKER_FIXTURES:
            item.add_marker(pytest.mark.integration)
        if names & _MOSQUITTO_FIXTURES:
            item.add_marker(pytest.mark.mosquitto)
        if names & _AEDES_FIXTURES:
            item.add_marker(pytest.mark.aedes)


def _log_sources(item: pytest.Item) -> list[LogSource]:
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    sources: list[LogSource] = []
    seen: set[int] = set()
    for value in funcargs.values():
        candidates: list[LogSource] = []
        if isinstance(value, _HasLogSources):
            candidates = value.log_sources()
        elif isinstance(value, (_ProcessBroker, EmbeddedAmqtt, MQTTProxy)):
            candidates = [value]
        for source in candidates:
            if id(source) not in seen:
                seen.add(id(source))
                sources.append(source)
    return sources


@pytest.hookimpl(hookwrapper=True)  # (not wrapper=True: that needs pluggy 1.1, pytest 8)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    report: pytest.TestReport = (yield).get_result()
    sources = _log_sources(item)
    if report.failed:
        for source in sources:
            report.sections.append(_section(source, _LOG_MARKS.get(source, 0)))
    if call.when == "teardown":
        # What the next test using a shared (module-scoped) broker shows starts here.
        for source in sources:
            try:
                _LOG_MARKS[source] = len(source.log_text())
            except Exception:  # noqa: BLE001, S112 - never break reporting
                continue


def _section(source: LogSource, offset: int) -> tuple[str, str]:
    try:
        text = source.log_text()
    except Exception as exc:  # noqa: BLE001 - never break reporting
        return f"{source.describe()} log", f"<could not read the log: {exc!r}>"
    note = ""
    if 0 < offset <= len(text):
        note = f"[{offset} characters logged before this test left out]\n"
        text = text[offset:]
    if len(text) > _MAX_SECTION_CHARS:
        note += f"[first {len(text) - _MAX_SECTION_CHARS} characters left out]\n"
        text = text[-_MAX_SECTION_CHARS:]
    return f"{source.describe()} log", note + (text or "<empty>\n")
