"""
C{twistd mqttd}: command-line options and the service they build.
"""

from __future__ import annotations

from twisted.application.service import IService
from twisted.python import usage

from mqttd.config import ConfigError, default_config, load_config
from mqttd.service import makeBrokerService


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


def makeService(options: Options) -> IService:
    """
    Build the broker service described by C{options}.

    A bad configuration ends the process with one line naming the file, section and key:
    twistd turns a L{usage.UsageError} raised here into a traceback, not a message.
    """
    # Imported here so that importing this module (for its Options, or in tests) installs no
    # global reactor; by now twistd has installed the one it was asked for.
    from twisted.internet import reactor

    path: str | None = options["config"]
    try:
        config = default_config() if path is None else load_config(path)
        # Plugins are found and built here, so a misnamed one or a bad option stops start-up too.
        return makeBrokerService(config, reactor)
    except ConfigError as e:
        raise SystemExit(f"twistd mqttd: {e}") from None
