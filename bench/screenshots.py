"""The README's screenshots of the real app (not a benchmark): starts `python app.py` with the
embedded default, asks the chat for stickers, searches, opens the library, and saves PNGs.

    python -m bench.screenshots --out assets/screenshots [--adapter DIR]

Needs Debian's chromium and chromium-driver (and fonts-noto-cjk for the Chinese text).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import browser  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "assets" / "screenshots"))
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--port", type=int, default=7870)
    ap.add_argument("--message", default="来一张晚安的表情包")
    ap.add_argument("--query", default="加油")
    ap.add_argument("--max-tokens", type=int, default=24, help="the reply's length in the chat screenshot")
    args = ap.parse_args(argv)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "app.py", "--port", str(args.port), "--index", str(Path(tmp) / "library")]
        if args.adapter:
            cmd += ["--adapter", args.adapter]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ready = threading.Event()

        def drain():  # read the app's output (a full pipe would stall it); note when chat is ready
            for line in proc.stdout:
                if "chat ready" in line or "failed" in line:
                    print(line.rstrip(), flush=True)
                    ready.set()

        threading.Thread(target=drain, daemon=True).start()
        try:
            browser.wait_for(lambda: _up(args.port), 120, what="the page")
            ready.wait(300)
            driver = browser.chrome(str(Path(tmp) / "profile"))
            driver.set_window_size(1400, 1050)
            try:
                driver.get(f"http://127.0.0.1:{args.port}/")
                browser.wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#chat-input textarea"), 60,
                                 what="the chat box")
                # settings: <pret> on and greedy, so the screenshot shows a retrieval
                driver.find_element(By.XPATH, "//button[contains(., 'Settings')]").click()
                time.sleep(0.5)
                box = driver.find_element(By.XPATH, "//label[contains(., 'always retrieve')]//input")
                if not box.is_selected():
                    box.click()
                for label, value in (("max new tokens", args.max_tokens), ("temperature", "0")):
                    num = driver.find_element(By.XPATH, f"//*[contains(text(), '{label}')]/ancestor::div"
                                              "[.//input[@type='number']][1]//input[@type='number']")
                    num.send_keys(Keys.CONTROL, "a")
                    num.send_keys(str(value), Keys.TAB)
                time.sleep(0.5)
                browser.send_chat(driver, args.message)
                browser.watch_reply(driver, 1, settle=3.0, timeout=300)
                browser.wait_for(lambda: browser.loaded_images(driver, "#chatbot .bot-row img") >= 1, 60,
                                 what="the gallery in the reply")
                driver.execute_script(  # show the conversation from its start
                    "document.querySelectorAll('#chatbot *').forEach(e => { if (e.scrollHeight > e.clientHeight)"
                    " e.scrollTop = 0; });")
                time.sleep(1)
                driver.save_screenshot(str(out / "chat.png"))
                tab = next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if "Search" in b.text)
                tab.click()
                q = browser.wait_for(lambda: [e for e in driver.find_elements(By.CSS_SELECTOR, "#search-text textarea, "
                                              "#search-text input") if e.is_displayed()], 10, what="search box")[0]
                q.send_keys(args.query)
                driver.find_element(By.CSS_SELECTOR, "#search-button").click()
                browser.wait_for(lambda: browser.loaded_images(driver, "#search-results img") >= 6, 60,
                                 what="search results")
                time.sleep(1)
                driver.save_screenshot(str(out / "search.png"))
                tab = next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                           if "My stickers" in b.text)
                tab.click()
                time.sleep(1)
                driver.save_screenshot(str(out / "library.png"))
            finally:
                driver.quit()
        finally:
            proc.terminate()
            proc.wait(20)
    print("\n".join(str(p) for p in sorted(out.glob("*.png"))))


def _up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    main()
