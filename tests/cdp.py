"""
Headless Chromium driven over the DevTools protocol through a pipe (C{--remote-debugging-pipe}:
JSON messages separated by NUL bytes, commands on the browser's fd 3, answers on its fd 4), so a
test can load a page, act on it through its DOM and take screenshots without any driver package.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

# Chromium starting and loading a page: generous for a slow, shared CI machine.
TIMEOUT = 30.0


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "the dashboard test needs Chromium: apt-get install chromium (Debian), then run the"
            " tests again",
            pytrace=False,
        )
    return path


def _high(fd: int) -> int:
    # Above 4, so that moving the pipe ends to fds 3 and 4 in the child cannot clobber them.
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


class Browser:
    """One headless Chromium with one page, attached for commands."""

    def __init__(self, profile: Path) -> None:
        toBrowser, self._commands = (_high(fd) for fd in os.pipe())
        self._answers, fromBrowser = (_high(fd) for fd in os.pipe())

        def arrange() -> None:
            os.dup2(toBrowser, 3)
            os.dup2(fromBrowser, 4)

        self.process = subprocess.Popen(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1280,900",
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=arrange,
            pass_fds=(3, 4),
        )
        os.close(toBrowser)
        os.close(fromBrowser)
        self._next = 0
        self._lock = threading.Lock()
        self._waiting: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.send("Page.enable", session=True)
        self.send("Runtime.enable", session=True)

    def _read(self) -> None:
        buffered = b""
        with os.fdopen(self._answers, "rb", buffering=0) as answers:
            while True:
                chunk = answers.read(65536)
                if not chunk:
                    return
                buffered += chunk
                *messages, buffered = buffered.split(b"\0")
                for message in messages:
                    parsed = json.loads(message)
                    waiting = self._waiting.get(parsed.get("id", -1))
                    if waiting is not None:
                        waiting.put(parsed)

    def send(self, method: str, *, session: bool = False, **params: Any) -> dict[str, Any]:
        """Run one DevTools command; its result, or a failed test naming the error."""
        with self._lock:
            self._next += 1
            ident = self._next
            answer: queue.Queue[dict[str, Any]] = queue.Queue()
            self._waiting[ident] = answer
            command: dict[str, Any] = {"id": ident, "method": method, "params": params}
            if session:
                command["sessionId"] = self.session
            os.write(self._commands, json.dumps(command).encode() + b"\0")
        try:
            reply = answer.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"Chromium did not answer {method} within {TIMEOUT} s") from None
        finally:
            del self._waiting[ident]
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply["result"]
        return result

    def open(self, url: str) -> None:
        self.send("Page.navigate", session=True, url=url)
        self.waitFor("document.readyState === 'complete' && !!document.body", f"{url} to load")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if a promise)."""
        result = self.send(
            "Runtime.evaluate",
            session=True,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def waitFor(self, expression: str, what: str, timeout: float = TIMEOUT) -> Any:
        """Poll C{expression} until it is truthy; fail naming C{what} after C{timeout}."""
        deadline = time.monotonic() + timeout
        # A DOM node comes back by value as an empty object: answer true for it instead.
        wrapped = f"(() => {{ const v = ({expression}); return v instanceof Node ? true : v; }})()"
        while True:
            value = self.evaluate(wrapped)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.05)

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            os.close(self._commands)
        except OSError:
            pass
        self.process.terminate()
        try:
            self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
