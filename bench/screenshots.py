"""The README's screenshots of the real app (not a benchmark): starts `python app.py` with the
embedded default and, with the app's default settings, asks the chat for stickers, searches by text
and by an uploaded sticker, opens the library, and saves PNGs.

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

from devkit import browser  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "assets" / "screenshots"))
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--port", type=int, default=7870)
    ap.add_argument("--message", default="来一张晚安的表情包")
    ap.add_argument("--query", default="加油")
    ap.add_argument("--sticker", default=str(ROOT / "assets" / "gallery" / "images" / "1f621@twemoji.png"),
                    help="the sticker uploaded to search by (a transparent PNG)")
    ap.add_argument("--upload", nargs="*", default=[str(ROOT / "assets" / "gallery" / "images" / f)
                                                    for f in ("1f43b-200d-2744@twemoji.png", "1f603@fluent-wobble.gif")],
                    help="stickers uploaded into the library")
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
                # the app's own default settings: what a person sees on first use
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
                q.send_keys(Keys.CONTROL, "a")
                q.send_keys(Keys.DELETE)
                driver.find_element(By.CSS_SELECTOR, "#search-image input[type=file]").send_keys(args.sticker)
                browser.wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#search-image img"), 30,
                                 what="the uploaded sticker")
                before = driver.find_element(By.CSS_SELECTOR, "#search-results").get_attribute("innerHTML")
                driver.find_element(By.CSS_SELECTOR, "#search-button").click()
                browser.wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "#search-results")
                                 .get_attribute("innerHTML") != before, 60, what="results for the sticker")
                browser.wait_for(lambda: browser.loaded_images(driver, "#search-results img") >= 6, 60,
                                 what="search results")
                time.sleep(1)
                driver.save_screenshot(str(out / "search-sticker.png"))
                tab = next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                           if "My stickers" in b.text)
                tab.click()
                time.sleep(1)
                for f in args.upload:  # two stickers into the library: the summary, the uploads, the count
                    driver.find_element(By.CSS_SELECTOR, "#library-upload input[type=file]").send_keys(f)
                    time.sleep(1)
                next(b for b in driver.find_elements(By.TAG_NAME, "button") if "Upload & index" in b.text).click()
                browser.wait_for(lambda: "added" in driver.find_element(By.TAG_NAME, "body").text, 120,
                                 what="the upload summary")
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
