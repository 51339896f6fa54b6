"""Headless Chromium driven over the DevTools protocol (CDP) through pipes, for the HTML report test.

Why this method: ``chromium --dump-dom`` shows the DOM but not the console, and
``--enable-logging=stderr`` mixes page errors with the browser's own chatter in a format that
changes between versions. ``--remote-debugging-pipe`` speaks CDP as NUL-terminated JSON on file
descriptors 3 (commands in) and 4 (replies and events out): no port, no websocket library, and
the page's errors arrive as structured events (Runtime.exceptionThrown, Runtime.consoleAPICalled,
Log.entryAdded), every request it makes as Network.requestWillBeSent. This is the transport
Puppeteer and Playwright use to launch Chromium.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Names Chromium's binary has across distributions (Debian: chromium); CHROMIUM overrides.
BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """The Chromium binary: $CHROMIUM, else the first of BINARIES on PATH; None if none."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return next((path for path in map(shutil.which, BINARIES) if path), None)


@dataclass
class PageLoad:
    """What a page did while it loaded: the errors the console showed, the URLs it requested,
    and the value of the expression evaluated in it afterwards."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    value: object = None


class Chromium:
    """One headless browser; ``load(url, expression)`` opens a page, waits for its load event and
    evaluates ``expression`` (JavaScript returning JSON-able data) in it."""

    def __init__(self, binary: str, timeout: float = 60.0):
        self.timeout = timeout
        self.profile = tempfile.TemporaryDirectory(prefix="fp16guard-chromium-")
        commands_read, self.commands = os.pipe()
        self.events, events_write = os.pipe()
        args = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
            "--disable-component-update", "--remote-debugging-pipe", f"--user-data-dir={self.profile.name}",
            "about:blank",
        ]
        self.process = subprocess.Popen(
            args, preexec_fn=lambda: _onto_3_and_4(commands_read, events_write), close_fds=False,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        os.close(commands_read)
        os.close(events_write)
        self.buffer = b""
        self.next_id = 0
        self.pending: list[dict] = []

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._send("Browser.close")
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired, TimeoutError):
            self.process.kill()
            self.process.wait()
        finally:
            self.process.stderr.close()
            for fd in (self.commands, self.events):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.profile.cleanup()

    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        return self.next_id

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.events], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.events, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium exited: {self.process.stderr.read().decode(errors='replace')[-2000:]}")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def _call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send a command and return its result; events that arrive meanwhile are kept."""
        sent = self._send(method, params, session)
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._receive(deadline)
            if message.get("id") == sent:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.pending.append(message)

    def _events(self, deadline: float):
        while self.pending:
            yield self.pending.pop(0)
        while True:
            yield self._receive(deadline)

    def load(self, url: str, expression: str) -> PageLoad:
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self._call(f"{domain}.enable", session=session)
        self.pending.clear()  # about:blank's events
        self._call("Page.navigate", {"url": url}, session)
        result = PageLoad()
        deadline = time.monotonic() + self.timeout
        for event in self._events(deadline):
            if event.get("sessionId") != session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Page.loadEventFired":
                break
            _record(result, method, params)
        # Errors logged up to the load event are in; evaluating also flushes what was queued.
        evaluated = self._call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        if "exceptionDetails" in evaluated:
            raise RuntimeError(f"the test's own expression failed: {evaluated['exceptionDetails']}")
        result.value = evaluated["result"].get("value")
        for event in self.pending:
            if event.get("sessionId") == session:
                _record(result, event.get("method"), event.get("params", {}))
        self.pending.clear()
        self._call("Target.closeTarget", {"targetId": target})
        return result


def _onto_3_and_4(commands: int, events: int) -> None:
    """In the child before exec: put the pipes on descriptors 3 and 4, where --remote-debugging-pipe
    expects them (first above 10, so that neither overwrites the other; dup2 makes them inheritable).
    close_fds stays off because it would close them; Python's own descriptors are not inheritable."""
    import fcntl

    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands, events)]
    for target, fd in zip((3, 4), high):
        os.dup2(fd, target)
        os.close(fd)


def _record(result: PageLoad, method: str | None, params: dict) -> None:
    """Keep what a CDP event says about errors and requests."""
    if method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        result.errors.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
    elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        values = " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", []))
        result.errors.append("console." + params["type"] + ": " + values)
    elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
        result.errors.append(f"log ({params['entry'].get('source')}): {params['entry'].get('text')}")
    elif method == "Network.requestWillBeSent":
        result.requests.append(params["request"]["url"])


def file_url(path: Path) -> str:
    return Path(path).resolve().as_uri()
