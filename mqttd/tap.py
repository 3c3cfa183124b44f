"""
C{twistd mqttd}: command-line options and the service they build.
"""

from __future__ import annotations

import contextlib
import gc
import os
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.application.service import IService, MultiService
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.python.components import Componentized

from mqttd.footprint import forgoUnusedTLS

if TYPE_CHECKING:
    from mqttd.config import LogConfig
    from mqttd.listening import ListenerError

# The broker's modules are imported once the options are parsed: which of them load TLS depends
# on the configuration (see mqttd.footprint), and twistd installs its reactor, whose TCP
# transport imports TLS when it can, before it builds the service.


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = (
        "Run the mqttd MQTT broker. Without --config it listens on tcp:1883:interface=127.0.0.1"
        " only and allows anonymous clients, which is safe because nothing off this machine can"
        " reach it; pass --config (see etc/mqttd.ini) to listen elsewhere."
    )
    optParameters = [
        [
            "config",
            "c",
            None,
            "Path of the ini configuration file ([broker] and [listener:NAME] sections). "
            "Default: one listener on tcp:1883:interface=127.0.0.1 allowing anonymous clients.",
        ],
    ]

    def postOptions(self) -> None:
        forgoUnusedTLS(self["config"])


class _OneLineStartup(MultiService):
    """
    The broker service as twistd runs it: a listener that cannot be opened ends start-up with
    exit status 1 and one line instead of a traceback.

    twistd handles only an L{Exception} from start-up, printing its traceback; a L{SystemExit}
    is printed as its one line (to the log, once twistd has redirected standard error), but
    twistd then neither removes the pid file nor, daemonized, answers its waiting parent, which
    would wait forever.  So both are done here, as twistd does them for an exception.

    @ivar twistd: twistd's own options (C{nodaemon}, C{pidfile}, C{statusPipe}), when run by it.
    """

    def __init__(self, twistd: usage.Options | None, log: LogConfig) -> None:
        super().__init__()
        self.twistd = twistd
        self.logConfig = log

    def setServiceParent(self, parent: Any) -> None:
        from mqttd.config import LogConfig
        from mqttd.logoutput import makeLogObserver

        # twistd hands its application here before it starts logging, and logs with the
        # observer the application carries, if any: the documented way to change twistd's log.
        if (
            self.twistd is not None
            and self.logConfig != LogConfig()
            and isinstance(parent, Componentized)
        ):
            parent.setComponent(ILogObserver, makeLogObserver(self.logConfig, self.twistd))
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        from mqttd.listening import ListenerError

        try:
            super().privilegedStartService()
        except ListenerError as e:
            self._failed(e)

    def _failed(self, error: ListenerError) -> NoReturn:
        line = f"twistd mqttd: {error}"
        if self.twistd is not None:
            statusPipe = self.twistd.get("statusPipe")
            if statusPipe is not None:
                # The parent reads 100 bytes, "1 " and its message, and prints that message.
                message = f"1 listener {error.listener.name}: {error.why}"
                os.write(statusPipe, message.encode()[:100])
                os.close(statusPipe)
                self.twistd["statusPipe"] = None
            pidfile = self.twistd.get("pidfile")
            if pidfile:
                with contextlib.suppress(OSError):
                    os.unlink(pidfile)
        raise SystemExit(line)


def makeService(options: Options) -> IService:
    """
    Build the broker service described by C{options}.

    A bad configuration ends the process with one line naming the file, section and key:
    twistd turns a L{usage.UsageError} raised here into a traceback, not a message.
    """
    # Imported here so that importing this module (for its Options, or in tests) installs no
    # global reactor; by now twistd has installed the one it was asked for.
    from twisted.internet import reactor

    from mqttd.config import ConfigError, default_config, load_config
    from mqttd.dispatch import installLeanDispatch
    from mqttd.service import makeBrokerService

    path: str | None = options["config"]
    try:
        config = default_config() if path is None else load_config(path)
        # Plugins are found and built here, so a misnamed one or a bad option stops start-up too.
        service = makeBrokerService(config, reactor)
    except ConfigError as e:
        raise SystemExit(f"twistd mqttd: {e}") from None
    startup = _OneLineStartup(getattr(options, "parent", None), config.log)
    service.setServiceParent(startup)
    tuneCollector()
    installLeanDispatch(reactor)
    return startup


# Young-generation passes of the cyclic collector every this many allocations (Python's default
# is 700), and older ones as rarely.  A broker allocates a few objects per message and per
# connection and leaves almost no cycles, while the default made the collector walk the growing
# heap of sessions again and again: ~19 % of the broker's CPU while bench S4 opened 10,000
# connections, ~9 % in S7's message traffic; with these, ~4 % in both.
COLLECTOR_THRESHOLDS = (50_000, 20, 10)


def tuneCollector() -> None:
    """
    Set the cyclic collector for a long-running broker process: what start-up built (modules,
    configuration, plugins) is frozen out of every later pass, and passes are rarer.
    """
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)
