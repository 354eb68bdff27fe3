"""The app in headless Chromium (tiny models): a retrieval request streams a reply with a gallery, a
sticker upload appears in the user's message, search shows results. Screenshots go to
$STICKER_CHAT_SCREENSHOTS (default: the test's tmp folder)."""
import os
from pathlib import Path

import pytest

from devkit import browser
from devkit.appworld import free_port, make_service

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
    driver = browser.open_chat(url, str(root / "chrome-profile"))
    try:
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


def test_typing_while_a_reply_streams_is_kept_and_a_message_sent_then_waits_its_turn(running_app):
    """The box is not cleared by the streaming reply, and Enter during a reply queues the message."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    service, url, root = running_app
    driver = browser.open_chat(url, str(root / "chrome-profile-typing"))
    try:
        browser.send_chat(driver, "第一条")
        browser.wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#chatbot .bot-row")) >= 1, 30,
                         what="the first reply to start")
        box = driver.find_element(By.CSS_SELECTOR, "#chat-input textarea")
        box.send_keys("第二条")
        box.send_keys(Keys.ENTER)  # sent while the first reply streams: it waits, shown as queued
        browser.wait_for(lambda: "queued" in driver.find_element(By.CSS_SELECTOR, "#chatbot").text, 10,
                         what="the second message shown as queued")
        box.send_keys("还没写完")  # typed while replies stream: kept
        browser.wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#chatbot .bot-row")) >= 2, 60,
                         what="the reply to the queued message")
        browser.watch_reply(driver, 2)
        users = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#chatbot .user-row")]
        assert len(users) == 2 and "第一条" in users[0] and "第二条" in users[1] and "queued" not in users[1]
        assert driver.find_element(By.CSS_SELECTOR, "#chat-input textarea").get_attribute("value") == "还没写完"
    finally:
        driver.quit()


def test_a_transparent_sticker_uploaded_to_search_finds_itself(running_app, tmp_path):
    """Uploaded through the Search tab's image component, a transparent PNG finds the identical
    sticker (indexed into the library) first, at score 1."""
    from selenium.webdriver.common.by import By

    from tests.test_uploads import SHAPES, transparent_sticker

    service, url, root = running_app
    stickers = [transparent_sticker(tmp_path / name, rgb, shape) for name, (rgb, shape) in SHAPES.items()]
    service.add_files([str(s) for s in stickers])
    seen = []
    search = service.search

    def spy(*args, **kwargs):
        seen.append(search(*args, **kwargs))
        return seen[-1]

    service.search = spy
    driver = browser.chrome(str(root / "chrome-profile-search"))
    try:
        driver.get(url)
        next(b for b in browser.wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "button[role=tab]"), 60,
                                         what="the tabs") if "Search" in b.text).click()
        upload = browser.wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#search-image input[type=file]"),
                                  10, what="the sticker upload")[0]
        upload.send_keys(str(stickers[0]))
        browser.wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#search-image img"), 30,
                         what="the uploaded sticker")
        driver.find_element(By.CSS_SELECTOR, "#search-button").click()
        browser.wait_for(lambda: seen, 30, what="the search")
        assert browser.wait_for(lambda: browser.loaded_images(driver, "#search-results img") >= 3, 30,
                                what="search results")
    finally:
        driver.quit()
        del service.search
    top = seen[-1][0]
    assert Path(top["file"]).name == stickers[0].name and top["score"] == pytest.approx(1.0, abs=1e-3), top
