"""The slower brokers of the broker matrix, from Debian's packages, as child processes on 127.0.0.1.

* :class:`EjabberdBroker` - ejabberd 23.01 ``mod_mqtt`` (MQTT 3.1.1 and 5), a non-distributed
  Erlang VM (no epmd); ``broker_conf/ejabberd.yml``. Needs a user name and a non-empty password
  in CONNECT (any are accepted): :attr:`EjabberdBroker.credentials`.
* :class:`RabbitMQBroker` - RabbitMQ 3.10 with ``rabbitmq_mqtt`` (MQTT 3.1.1 only);
  ``broker_conf/rabbitmq.conf``. Erlang distribution is bound to 127.0.0.1 and registers with an
  epmd of its own (:class:`EpmdServer`) on a free loopback port.
* :class:`ActiveMQBroker` - ActiveMQ Classic 5.17 (MQTT 3.1.1 only); ``broker_conf/activemq.xml``.
  Run from a private home in its temporary directory whose ``lib`` links ActiveMQ's jars and
  libmqtt-client-java's (as packaged, the MQTT connector lacks them and drops every connection
  with ``NoClassDefFoundError: org/fusesource/mqtt/codec/PINGRESP``); nothing under /usr changes.

Each has the interface of :mod:`mqttsession.testing.brokers` (``start()``, ``stop()`` by pid,
``kill()``, ``log_text()``, ``address``...), and a function saying why it cannot run here
(``ejabberd_unavailable()``, ...: the Debian packages to install). They take 1-15 s to start;
the tests that use them carry the ``slow_brokers`` marker.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import ClassVar

from .brokers import LOCALHOST, _ProcessBroker, free_port, load_template, render_template

__all__ = [
    "ActiveMQBroker",
    "EjabberdBroker",
    "EpmdServer",
    "RabbitMQBroker",
    "activemq_unavailable",
    "debian_version",
    "ejabberd_unavailable",
    "rabbitmq_unavailable",
]

_ACTIVEMQ_HOME = Path("/usr/share/activemq")
_JAVA_SHARE = Path("/usr/share/java")
_MQTT_CLIENT_JARS = ("mqtt-client.jar", "hawtdispatch.jar", "hawtdispatch-transport.jar")
_RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


def debian_version(package: str) -> str | None:
    """The installed version of a Debian package (``dpkg-query``), or None."""
    dpkg = shutil.which("dpkg-query")
    if dpkg is None:
        return None
    try:
        done = subprocess.run([dpkg, "-W", "-f", "${Version}", package],  # noqa: S603
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def _find_erl() -> str | None:
    return shutil.which("erl") or next((p for p in ("/usr/bin/erl", "/usr/lib/erlang/bin/erl")
                                        if os.access(p, os.X_OK)), None)


def _ejabberd_lib() -> Path | None:
    """The folder holding ejabberd's Erlang application (``ERL_LIBS``): /usr/lib/<triplet>."""
    found = sorted(glob.glob("/usr/lib/*/ejabberd-*/ebin/ejabberd.app"))
    return Path(found[-1]).parent.parent.parent if found else None


def ejabberd_unavailable() -> str | None:
    """Why :class:`EjabberdBroker` cannot run here, or None."""
    if _find_erl() is None or _ejabberd_lib() is None:
        return "ejabberd not installed (apt-get install -y ejabberd)"
    return None


def rabbitmq_unavailable() -> str | None:
    """Why :class:`RabbitMQBroker` cannot run here, or None."""
    if not os.access(_RABBITMQ_SERVER, os.X_OK):
        return "RabbitMQ not installed (apt-get install -y rabbitmq-server)"
    if not glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/rabbitmq_mqtt-*"):
        return "RabbitMQ's rabbitmq_mqtt plugin not found"
    if shutil.which("epmd") is None and not os.access("/usr/lib/erlang/bin/epmd", os.X_OK):
        return "epmd not found (it comes with rabbitmq-server's Erlang)"
    return None


def activemq_unavailable() -> str | None:
    """Why :class:`ActiveMQBroker` cannot run here, or None."""
    if shutil.which("java") is None:
        return "java not found (ActiveMQ needs a JRE: apt-get install -y activemq)"
    if not (_ACTIVEMQ_HOME / "bin" / "activemq.jar").exists():
        return "ActiveMQ not installed (apt-get install -y activemq libmqtt-client-java)"
    missing = [jar for jar in _MQTT_CLIENT_JARS if not (_JAVA_SHARE / jar).exists()]
    if missing:
        return (f"ActiveMQ's MQTT connector needs {', '.join(missing)}:"
                " apt-get install -y libmqtt-client-java")
    return None


class _ServerBroker(_ProcessBroker):
    """A broker whose process may leave children behind: SIGKILL goes to its process group."""

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        try:
            if sig is signal.SIGKILL:
                os.killpg(self._proc.pid, sig)  # start_new_session: its group id is its pid
            else:
                os.kill(self._proc.pid, sig)
        except ProcessLookupError:
            pass


class EjabberdBroker(_ServerBroker):
    """ejabberd ``mod_mqtt`` on 127.0.0.1 (MQTT 3.1.1 and 5), a non-distributed Erlang VM.

    Ready when it logs "Start accepting TCP connections" for its MQTT port; SIGTERM stops it
    (``init:stop``). Clients must send a user name and a non-empty password: any pass
    (``credentials``).
    """

    kind = "ejabberd"
    credentials: ClassVar[tuple[str, str]] = ("mqttsession", "mqttsession")

    def __init__(self, conf_template: str | os.PathLike[str] = "ejabberd.yml", *,
                 startup_timeout: float = 30.0, stop_timeout: float = 20.0) -> None:
        reason = ejabberd_unavailable()
        if reason is not None:
            raise FileNotFoundError(reason)
        erl, lib = _find_erl(), _ejabberd_lib()
        assert erl is not None and lib is not None
        self.erl, self.erl_libs = erl, lib
        self.conf_template = conf_template
        super().__init__(startup_timeout=startup_timeout, stop_timeout=stop_timeout)
        self.config_path = self.workdir / "ejabberd.yml"
        self.spool = self.workdir / "spool"

    def _prepare(self) -> None:
        self.spool.mkdir(exist_ok=True)
        text, origin = load_template(self.conf_template)
        self.config_path.write_text(f"# rendered from {origin}\n{render_template(text, port=self.port)}",
                                    encoding="utf-8")

    def _command(self) -> list[str]:
        # what `ejabberdctl foreground` runs, minus su, -sname (distribution) and the system paths
        return [self.erl, "+K", "true", "-noinput", "-noshell", "-mnesia", "dir", f'"{self.spool}"',
                "-s", "ejabberd"]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOME=str(self.workdir),
            ERL_LIBS=str(self.erl_libs),
            EJABBERD_CONFIG_PATH=str(self.config_path),
            EJABBERD_LOG_PATH=str(self.workdir / "ejabberd-file.log"),
            ERL_CRASH_DUMP=str(self.workdir / "erl_crash.dump"),
            ERL_CRASH_DUMP_BYTES="0",
        )
        return env

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        # a taken port is logged ("... address already in use" / eaddrinuse) while the VM runs on
        return self._wait_log_line(proc, f"Start accepting TCP connections at {LOCALHOST}:{self.port}",
                                   deadline, failure="eaddrinuse")


class EpmdServer(_ProcessBroker):
    """An Erlang port mapper (``epmd``) on 127.0.0.1 and a free port, in the foreground.

    Not a broker: the one :class:`RabbitMQBroker` registers its node with (``ERL_EPMD_PORT``), so
    that no system-wide epmd is started or shared.
    """

    kind = "epmd"

    def __init__(self) -> None:
        binary = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        self.epmd_bin = binary
        super().__init__(startup_timeout=10.0, stop_timeout=5.0)

    def _command(self) -> list[str]:
        return [self.epmd_bin, "-port", str(self.port), "-address", LOCALHOST]


class RabbitMQBroker(_ServerBroker):
    """RabbitMQ with the ``rabbitmq_mqtt`` plugin on 127.0.0.1 (MQTT 3.1.1 only).

    Its node ``mqttsessionPORT@localhost`` keeps its Mnesia, logs and Erlang cookie in the
    temporary directory; distribution listens on 127.0.0.1 only and registers with its own
    :class:`EpmdServer`. Ready when it logs "Server startup complete" (about 10-15 s); SIGTERM stops
    it cleanly (a few seconds), then the epmd is stopped.
    """

    kind = "rabbitmq"

    def __init__(self, conf_template: str | os.PathLike[str] = "rabbitmq.conf", *,
                 startup_timeout: float = 90.0, stop_timeout: float = 30.0) -> None:
        reason = rabbitmq_unavailable()
        if reason is not None:
            raise FileNotFoundError(reason)
        self.conf_template = conf_template
        super().__init__(startup_timeout=startup_timeout, stop_timeout=stop_timeout)
        self.epmd = EpmdServer()
        self.config_path = self.workdir / "rabbitmq.conf"
        self._dist_port: int | None = None

    def _prepare(self) -> None:
        text, origin = load_template(self.conf_template)
        self.config_path.write_text(f"# rendered from {origin}\n{render_template(text, port=self.port)}",
                                    encoding="utf-8")
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n", encoding="utf-8")
        if not self.epmd.running:
            self.epmd.start()
        self._dist_port = free_port()

    def _command(self) -> list[str]:
        return [str(_RABBITMQ_SERVER)]

    def _env(self) -> dict[str, str]:
        w = self.workdir
        env = dict(os.environ)
        env.update(
            HOME=str(w),  # its .erlang.cookie
            RUNNING_UNDER_SYSTEMD="true",  # the script execs the VM: our pid is the broker's
            ERL_EPMD_ADDRESS=LOCALHOST,
            ERL_EPMD_PORT=str(self.epmd.port),
            RABBITMQ_NODENAME=f"mqttsession{self.port}@localhost",
            RABBITMQ_NODE_IP_ADDRESS=LOCALHOST,
            RABBITMQ_DIST_PORT=str(self._dist_port),
            RABBITMQ_CONFIG_FILE=str(self.config_path),
            RABBITMQ_CONF_ENV_FILE=str(w / "rabbitmq-env.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(w / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(w / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(w / "mnesia"),
            RABBITMQ_LOG_BASE=str(w / "log"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(w / "plugins-expand"),
            RABBITMQ_PID_FILE=str(w / "rabbitmq.pid"),
            RABBITMQ_FEATURE_FLAGS_FILE=str(w / "feature_flags"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"),
        )
        return env

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        return self._wait_log_line(proc, "Server startup complete", deadline)

    def stop(self, timeout: float | None = None) -> int | None:
        try:
            return super().stop(timeout)
        finally:
            self.epmd.stop()

    def kill(self) -> int | None:
        try:
            return super().kill()
        finally:
            self.epmd.kill()

    def cleanup(self) -> None:
        super().cleanup()
        self.epmd.cleanup()


class ActiveMQBroker(_ServerBroker):
    """ActiveMQ Classic on 127.0.0.1 (MQTT 3.1.1 only), in memory (``persistent="false"``).

    Runs ``java -jar activemq.jar start`` from a private ActiveMQ home in its temporary directory:
    ``lib`` links Debian's ActiveMQ jars plus libmqtt-client-java's ``mqtt-client.jar``,
    ``hawtdispatch.jar`` and ``hawtdispatch-transport.jar``. Ready when the MQTT port accepts a
    connection (about 3-13 s); SIGTERM stops the JVM.
    """

    kind = "activemq"

    def __init__(self, conf_template: str | os.PathLike[str] = "activemq.xml", *,
                 java_options: tuple[str, ...] = ("-Xms64M", "-Xmx256M"),
                 startup_timeout: float = 60.0, stop_timeout: float = 20.0) -> None:
        reason = activemq_unavailable()
        if reason is not None:
            raise FileNotFoundError(reason)
        java = shutil.which("java")
        assert java is not None
        self.java = java
        self.java_options = java_options
        self.conf_template = conf_template
        super().__init__(startup_timeout=startup_timeout, stop_timeout=stop_timeout)
        self.home = self.workdir / "home"
        self.base = self.workdir / "base"
        self.config_path = self.base / "conf" / "activemq.xml"
        self._make_home()

    def _make_home(self) -> None:
        (self.home / "bin").mkdir(parents=True, exist_ok=True)
        lib = self.home / "lib"
        lib.mkdir(exist_ok=True)
        (self.home / "bin" / "activemq.jar").symlink_to(_ACTIVEMQ_HOME / "bin" / "activemq.jar")
        for item in sorted((_ACTIVEMQ_HOME / "lib").iterdir()):
            (lib / item.name).symlink_to(item)
        for jar in _MQTT_CLIENT_JARS:
            (lib / jar).symlink_to(_JAVA_SHARE / jar)
        (self.base / "conf").mkdir(parents=True, exist_ok=True)
        (self.base / "data").mkdir(exist_ok=True)

    def _prepare(self) -> None:
        text, origin = load_template(self.conf_template)
        rendered = render_template(text, port=self.port, data_dir=self.base / "data")
        self.config_path.write_text(rendered.replace("?>", f"?>\n<!-- rendered from {origin} -->", 1),
                                    encoding="utf-8")
        log_text, _ = load_template("activemq-log4j.properties")
        (self.base / "conf" / "log4j.properties").write_text(log_text, encoding="utf-8")

    def _command(self) -> list[str]:
        conf = self.base / "conf"
        return [
            self.java, *self.java_options, "-Djava.awt.headless=true",
            f"-Dactivemq.home={self.home}", f"-Dactivemq.base={self.base}",
            f"-Dactivemq.conf={conf}", f"-Dactivemq.data={self.base / 'data'}",
            f"-Dlog4j.configuration=file:{conf / 'log4j.properties'}",
            "-jar", str(self.home / "bin" / "activemq.jar"), "start", f"xbean:file:{self.config_path}",
        ]

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        return self._wait_log_line(proc, "Connector mqtt started", deadline,
                                   failure="Address already in use")
