"""The app in headless Chromium (tiny models): a retrieval request streams a reply with a gallery, a
sticker upload appears in the user's message, search shows results. Screenshots go to
$STICKER_CHAT_SCREENSHOTS (default: the test's tmp folder)."""
import os
from pathlib import Path

import pytest

from tests import browser
from tests.appworld import free_port, make_service

pytestmark = pytest.mark.skipif(not browser.available(), reason="needs Debian's chromium and chromium-driver "
                                "(apt-get install chromium chromium-driver; .ci/run installs them)")


@pytest.fixture(scope="module")
def running_app(tmp_path_factory):
    import app

    root = tmp_path_factory.mktemp("browser")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STICKER_CHAT_CACHE", str(root / "cache"))
        service = make_service(root, delay=0.03)  # ~30 ms a token: slow enough to watch it stream
        port = free_port()
        demo = app.launch(service, port=port, block=False, quiet=True)
        try:
            yield service, f"http://127.0.0.1:{port}/", root
        finally:
            demo.close()


def test_chat_search_and_upload_in_a_browser(running_app):
    from selenium.webdriver.common.by import By

    service, url, root = running_app
    shots = Path(os.environ.get("STICKER_CHAT_SCREENSHOTS") or root / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    driver = browser.chrome(str(root / "chrome-profile"))
    try:
        driver.get(url)
        browser.wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#chat-input textarea"), 60,
                         what="the chat box")
        # a retrieval request: the reply streams, then a gallery of stickers sits inside it
        browser.send_chat(driver, "来个表情包")
        lengths = browser.watch_reply(driver, 1)
        assert len(set(lengths)) >= 4, f"the reply did not stream: text lengths seen {lengths}"
        assert browser.wait_for(lambda: browser.loaded_images(driver, "#chatbot .bot-row img") >= 8, 30,
                                what="the gallery in the reply")
        assert browser.loaded_images(driver, "#side-gallery img") >= 8
        driver.save_screenshot(str(shots / "chat.png"))
        # a sticker sent by the user shows in the user's message and gets a reply
        sticker = Path(service.options.gallery) / "images" / "red.png"
        browser.send_chat(driver, "像这张的", files=[sticker])
        browser.wait_for(lambda: browser.loaded_images(driver, "#chatbot .user-row img") >= 1, 30,
                         what="the sent sticker in the user's message")
        browser.watch_reply(driver, 2)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#chatbot .bot-row")) == 2
        driver.save_screenshot(str(shots / "chat-upload.png"))
        # search tab: a text query fills the results gallery
        next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if "Search" in b.text).click()
        box = browser.wait_for(lambda: [e for e in driver.find_elements(By.CSS_SELECTOR, "#search-text textarea,"
                                                                        " #search-text input") if e.is_displayed()],
                               10, what="the search box")[0]
        box.send_keys("表情")
        driver.find_element(By.CSS_SELECTOR, "#search-button").click()
        assert browser.wait_for(lambda: browser.loaded_images(driver, "#search-results img") >= 8, 30,
                                what="search results")
        driver.save_screenshot(str(shots / "search.png"))
        next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if "My stickers" in b.text).click()
        browser.wait_for(lambda: "My stickers" in driver.find_element(By.TAG_NAME, "body").text, 10,
                         what="the library tab")
        driver.save_screenshot(str(shots / "library.png"))
    finally:
        driver.quit()
    assert all((shots / f).stat().st_size > 10_000 for f in ("chat.png", "chat-upload.png", "search.png"))
