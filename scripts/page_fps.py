#!/usr/bin/env python3
"""Frames per second of the page's live mode in headless Chromium with its fake camera,
for the style's teacher and its live twin (the "fast live model" switch), over DURATION
seconds each. Speaks WebDriver to chromedriver with the standard library only.

    scripts/page_fps.py URL STYLE [DURATION]

URL is a running `impasto serve` (e.g. http://127.0.0.1:8787). Chromium runs on the same
machine as the server, so it takes CPU from it: say so when quoting these numbers.
Prints one JSON object per mode.
"""
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request


def call(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())["value"]


def main():
    url, style = sys.argv[1], sys.argv[2]
    duration = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        sys.exit("needs chromium and chromedriver on PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                call(base, "GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update",
                     "--no-first-run", "--window-size=1280,1000",
                     "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]}}}}
        sid = call(base, "POST", "/session", caps)["sessionId"]
        s = f"/session/{sid}"
        js = lambda code: call(base, "POST", s + "/execute/sync", {"script": code, "args": []})
        call(base, "POST", s + "/url", {"url": f"{url}/?style={style}"})
        for _ in range(300):
            if js("return document.querySelectorAll('.style-card').length > 0 && !!state.style"):
                break
            time.sleep(0.1)
        js(f"select({json.dumps(style)})")
        for fast in (False, True):
            js(f"document.getElementById('live-fast').checked = {str(fast).lower()};")
            js("document.getElementById('live-toggle').click()")
            # Warm up until frames flow, then count frames over the window.
            for _ in range(600):
                if int(js("return +(document.getElementById('fps').dataset.frames || 0)")) >= 3:
                    break
                time.sleep(0.1)
            f0 = int(js("return +document.getElementById('fps').dataset.frames"))
            t0 = time.time()
            time.sleep(duration)
            f1 = int(js("return +document.getElementById('fps').dataset.frames"))
            dt = time.time() - t0
            info = js("return document.getElementById('live-info').textContent")
            js("document.getElementById('live-toggle').click()")
            time.sleep(1.0)
            js("document.getElementById('fps').dataset.frames = '0'")
            print(json.dumps({"mode": "live twin" if fast else "teacher", "frames": f1 - f0,
                              "seconds": round(dt, 2), "fps": round((f1 - f0) / dt, 2),
                              "last_frame": info}))
        call(base, "DELETE", s)
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
