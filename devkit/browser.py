"""Headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) for the browser test and
the README screenshots. No browser is downloaded: `chrome()` uses /usr/bin/chromium."""
from __future__ import annotations

import shutil
import time

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
         "--window-size=1400,1000", "--lang=zh-CN"]


def available() -> bool:
    return bool(shutil.which("chromium") and shutil.which("chromedriver"))


def chrome(user_data_dir: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={user_data_dir}"]:
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def wait_for(fn, timeout: float = 60.0, every: float = 0.1, what: str = "condition"):
    """Poll `fn` until it returns something truthy; TimeoutError naming `what` otherwise."""
    end = time.time() + timeout
    while time.time() < end:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def open_chat(url: str, profile: str):
    """A headless Chromium (its profile in `profile`) on the app at `url`, once its chat box is up."""
    from selenium.webdriver.common.by import By

    driver = chrome(profile)
    try:
        driver.get(url)
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#chat-input textarea"), 60, what="the chat box")
    except BaseException:
        driver.quit()
        raise
    return driver


def send_chat(driver, text: str, files=()) -> None:
    """Type into the chat box (attaching `files`) and press Enter."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    for f in files:
        driver.find_element(By.CSS_SELECTOR, "#chat-input input[type=file]").send_keys(str(f))
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#chat-input img"), 30, what="the upload thumbnail")
    box = driver.find_element(By.CSS_SELECTOR, "#chat-input textarea")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def watch_reply(driver, n_bots: int, settle: float = 2.0, timeout: float = 120.0) -> list[int]:
    """Lengths of the last bot message's text, sampled until message `n_bots` exists and its text has
    not changed for `settle` seconds."""
    from selenium.webdriver.common.by import By

    lengths, last_change, end = [], time.time(), time.time() + timeout
    while time.time() < end:
        bots = driver.find_elements(By.CSS_SELECTOR, "#chatbot .bot-row")
        if len(bots) >= n_bots:
            n = len(bots[-1].text)
            if not lengths or n != lengths[-1]:
                lengths.append(n)
                last_change = time.time()
            elif time.time() - last_change > settle:
                return lengths
        time.sleep(0.05)
    raise TimeoutError(f"the reply did not settle in {timeout:.0f} s (lengths seen: {lengths[-10:]})")


def loaded_images(driver, css: str) -> int:
    """How many images under `css` have loaded (naturalWidth > 0)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).filter(i => i.complete && i.naturalWidth > 0)"
        ".length", css)
