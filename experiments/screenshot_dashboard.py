"""Screenshot the dashboard of a runs directory in headless Debian chromium (for the docs).

    python experiments/screenshot_dashboard.py RUNS_DIR OUT.png [--run NAME ...] [--tab layers|training|evaluation]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs_dir")
    p.add_argument("out")
    p.add_argument("--tab", default="layers")
    p.add_argument("--height", type=int, default=1400)
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "reprkit.cli", "dashboard", args.runs_dir, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1500, "height": args.height})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=120_000)
            if args.tab != "layers":
                page.get_by_role("tab", name=args.tab).click()
                page.wait_for_timeout(1500)
            page.wait_for_timeout(2000)
            page.screenshot(path=args.out)
            browser.close()
        print(f"wrote {args.out}")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
