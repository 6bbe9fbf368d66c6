"""A real browser for tests: headless Chromium driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: requests on fd 3, replies on fd 4, NUL-terminated JSON), so no
driver package is needed.

    with Browser() as b:
        b.open(path, javascript=False)
        b.eval("document.title"); b.click("#op-3"); b.screenshot(png)
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def chromium() -> str | None:
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


class BrowserError(RuntimeError):
    pass


class Browser:
    def __init__(self, width: int = 1400, height: int = 1000, timeout: float = 60):
        exe = chromium()
        if exe is None:
            raise BrowserError("no Chromium: apt-get install chromium (make install does)")
        self.width, self.height, self.timeout = width, height, timeout
        ours_read, chrome_write = os.pipe()
        chrome_read, ours_write = os.pipe()

        def wire():  # in the child: its fd 3 reads our requests, fd 4 carries its replies
            a, b = os.dup(chrome_read), os.dup(chrome_write)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--disable-extensions",
                "--remote-debugging-pipe",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            preexec_fn=wire,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(chrome_read)
        os.close(chrome_write)
        self._read, self._write = ours_read, ours_write
        self._buffer = b""
        self._id = 0
        self._events: list[dict] = []
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
            self.session = attached["sessionId"]
            for domain in ("Page", "Runtime", "DOM"):
                self.send(f"{domain}.enable", session=True)
            self.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=True,
            )
        except BaseException:
            self.close()
            raise

    # ---- protocol -------------------------------------------------------------------------
    def _message(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise BrowserError("Chromium stopped answering")
            if not select.select([self._read], [], [], left)[0]:
                continue
            chunk = os.read(self._read, 1 << 16)
            if not chunk:
                raise BrowserError("Chromium closed the pipe")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(line)

    def send(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._write, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def _wait_event(self, method: str) -> dict:
        while True:
            for k, e in enumerate(self._events):
                if e.get("method") == method:
                    return self._events.pop(k)
            self._events.append(self._message())

    # ---- what tests use -------------------------------------------------------------------
    def open(self, path: str | Path, javascript: bool = True, fragment: str = "") -> None:
        """Load a file and wait for its load event; scripts off when ``javascript`` is False."""
        self.send("Emulation.setScriptExecutionDisabled", {"value": not javascript}, session=True)
        self._events.clear()
        url = Path(path).resolve().as_uri() + (f"#{fragment}" if fragment else "")
        self.send("Page.navigate", {"url": url}, session=True)
        self._wait_event("Page.loadEventFired")

    def eval(self, expression: str):
        """Evaluate in the page (works with page scripts disabled) and return the value."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=True,
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0):
        """Evaluate until the value is truthy (events such as hashchange run after the click
        that caused them); the last value, asserted truthy."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value or time.monotonic() > deadline:
                assert value, f"never true in the page: {expression}"
                return value
            time.sleep(0.05)

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) at the centre of the element."""
        box = self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center', inline: 'center'});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1},
                session=True,
            )

    def screenshot(self, path: str | Path, full_page: bool = False) -> bytes:
        params: dict = {"format": "png"}
        if full_page:
            w, h = self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": w, "height": min(h, 16000), "scale": 1}
            params["captureBeyondViewport"] = True
        png = base64.b64decode(self.send("Page.captureScreenshot", params, session=True)["data"])
        Path(path).write_bytes(png)
        return png

    def close(self) -> None:
        with contextlib.suppress(BrowserError, OSError):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
