"""
Where and how C{twistd mqttd} writes its log when the C{[log]} section asks for something other
than twistd's default: a minimum level, and text or JSON lines, to the file (or standard output)
twistd's own options name.
"""

from __future__ import annotations

import json
import signal
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

from mqttd.config import LogConfig


def _plain(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each event as one JSON object on one line, as log shippers (Loki, Elasticsearch,
    journald's JSON import) read them: C{time} (ISO 8601, UTC), C{level}, C{namespace},
    C{message} (the event's text), every plain field the event carries (C{clientId},
    C{address}, C{username}, C{reason}, ...) and, for a failure, its C{traceback}.
    """

    def __init__(self, output: IO[str]) -> None:
        self.output = output

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        record: dict[str, object] = {
            "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(),
            "level": getattr(level, "name", "info"),
            "namespace": event.get("log_namespace", "-"),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if not key.startswith("log_") and key not in record and _plain(value):
                record[key] = value
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        self.output.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.output.flush()


def _output(twistd: Any) -> IO[str]:
    """
    The file twistd would log to: C{--logfile}, standard output with C{--logfile=-} or with
    C{--nodaemon} and no C{--logfile}, else C{twistd.log}; a file rotates on SIGUSR1 as
    twistd's own does.
    """
    name = twistd.get("logfile") or ""
    if name == "-" or (twistd.get("nodaemon") and not name):
        return sys.stdout
    logFile = LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(logFile.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return logFile


def makeLogObserver(log: LogConfig, twistd: Any) -> ILogObserver:
    """
    The observer twistd is to log with for C{log}: its format, to twistd's destination (syslog
    with C{--syslog}, where lines stay text), dropping events below its level.

    @param twistd: twistd's own options (C{logfile}, C{nodaemon}, C{syslog}, C{prefix}).
    """
    observer: ILogObserver
    if twistd.get("syslog"):
        from twisted.python import syslog

        observer = LegacyLogObserverWrapper(
            syslog.SyslogObserver(twistd.get("prefix")).emit  # type: ignore[arg-type]
        )
    elif log.format == "json":
        observer = JSONLinesObserver(_output(twistd))
    else:
        observer = textFileLogObserver(_output(twistd))
    level = LogLevel.levelWithName(log.level)
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=level)])
