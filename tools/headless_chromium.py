"""Drive a headless Chromium through the Chrome DevTools protocol over a pipe
(``--remote-debugging-pipe``: JSON messages ending in a NUL byte on file descriptors 3 and 4), with
the standard library only: no browser-automation package, no driver binary, no port to find.

Used by the web demo's browser test and by tools/web_demo_screenshot.py::

    with HeadlessChromium() as browser:
        browser.navigate("http://127.0.0.1:7860")
        browser.wait_for("document.querySelector('#detect') !== null")
        browser.set_input_files("#input-image input[type=file]", ["photo.jpg"])
        browser.screenshot("page.png")
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> Optional[str]:
    """The Chromium executable: $CHROMIUM, else the first of ``CHROMIUM_NAMES`` on PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


class BrowserError(RuntimeError):
    """Chromium failed to start, answered a command with an error, or a wait timed out."""


class HeadlessChromium:
    """One headless Chromium with one page; commands go to that page (``call``)."""

    def __init__(self, executable: Optional[str] = None, width: int = 1280, height: int = 900, timeout: float = 60.0):
        self.executable = executable or find_chromium()
        if not self.executable:
            raise BrowserError(f"no Chromium found (set $CHROMIUM or install one of: {', '.join(CHROMIUM_NAMES)})")
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="denseclip_chromium_")
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        args = [
            self.executable, "--headless=new", "--remote-debugging-pipe", f"--user-data-dir={self._profile}",
            f"--window-size={width},{height}", "--no-first-run", "--no-default-browser-check", "--disable-gpu",
            "--disable-dev-shm-usage", "--disable-extensions", "--disable-background-networking", "--mute-audio",
            "--hide-scrollbars", "about:blank",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root (CI runs as root)

        def map_pipes():  # the protocol's fixed descriptors: 3 = commands in, 4 = answers out
            write_end = os.dup(from_browser_write) if from_browser_write == 3 else from_browser_write
            os.dup2(to_browser_read, 3)
            os.dup2(write_end, 4)

        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, preexec_fn=map_pipes, pass_fds=(3, 4))
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.session_id: Optional[str] = None
        try:
            targets = self.call("Target.getTargets", session=False)["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            self.session_id = self.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True},
                                        session=False)["sessionId"]
            self.call("Page.enable")
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------- protocol
    def call(self, method: str, params: Optional[Dict[str, Any]] = None, session: bool = True) -> Dict[str, Any]:
        """Send one command (to the page unless ``session=False``) and return its result."""
        self._next_id += 1
        message: Dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session_id:
            message["sessionId"] = self.session_id
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')} ({reply['error']})")
                return reply.get("result", {})

    def _read_message(self, deadline: float) -> Dict[str, Any]:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise BrowserError(f"Chromium did not answer within {self.timeout:.0f} s")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise BrowserError(f"Chromium closed the pipe (exit status {self._process.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    # ------------------------------------------------------------------------------- page
    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"JavaScript error in {expression!r}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: Optional[float] = None, interval: float = 0.25) -> Any:
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout or self.timeout:.0f} s waiting for: {expression}")
            time.sleep(interval)

    def set_input_files(self, selector: str, paths: Sequence[str]) -> None:
        """Choose files in the ``<input type=file>`` matching ``selector``, as a user would."""
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise BrowserError(f"no such file(s) to upload: {missing}")
        root = self.call("DOM.getDocument", {"depth": -1, "pierce": True})["root"]["nodeId"]
        node = self.call("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        if not node:
            raise BrowserError(f"no element matches {selector!r}")
        self.call("DOM.setFileInputFiles", {"nodeId": node, "files": [os.path.abspath(p) for p in paths]})

    def screenshot(self, path: str, full_page: bool = True) -> List[int]:
        """Write a PNG of the page (all of it with ``full_page``); returns its [width, height]."""
        params: Dict[str, Any] = {"format": "png"}
        if full_page:
            width, height = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        data = base64.b64decode(self.call("Page.captureScreenshot", params)["data"])
        with open(path, "wb") as f:
            f.write(data)
        return [int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")]

    # ------------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self.call("Browser.close", session=False)
                self._process.wait(timeout=10)
            except (BrowserError, OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "HeadlessChromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
