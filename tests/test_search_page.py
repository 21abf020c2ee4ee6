"""The search page (export/web) end to end in headless Chromium: the dev server (``python -m
export.serve ... --rest-port 0 --ui --index DIR``) serves the page, the collection's images and
TF Serving's REST API; the page queries the REST API like it would a real TF Serving.

The model is a ViT-Tiny CLIP trained in the fixture for a few hundred steps on the built-in
shapes data (``keras_clip.train.train_clip``), so "type a caption, the right image comes first"
is a real retrieval: the collection is six single-object shapes scenes (distinct colours and
shapes) embedded by ``keras_clip.embed``, and each query is one scene's own caption.

Needs Debian's ``chromium`` + ``chromium-driver`` and the ``selenium`` package (``make browser``
installs them). Without them the test is skipped locally, and fails under ``CI=true``.
Set ``SEARCH_PAGE_SCREENSHOT=docs/search_page.png`` to keep the screenshot of the results.
"""

import os
import shutil
import tempfile

import keras
import pytest
import tensorflow as tf

pytestmark = pytest.mark.slow

from test_rest import Server  # noqa: E402
from test_search_signature import build_index  # noqa: E402

TARGETS = ("red square", "green circle", "blue star", "yellow triangle", "purple diamond",
           "orange circle")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-quic", "--no-first-run",
                  "--disable-component-update", "--disable-sync", "--window-size=1100,560")


def _browser_or_skip():
    """(selenium webdriver module, chromium path, chromedriver path); skip, or fail under CI."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    missing = [name for name, found in (("chromium", chromium), ("chromedriver", driver),
                                        ("selenium (pip)", webdriver)) if not found]
    if missing:
        message = (f"browser test needs {', '.join(missing)}: run `make browser` (apt-get "
                   "install chromium chromium-driver; pip install selenium)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return webdriver, chromium, driver


def _scenes():
    """One single-object val scene per target (colour, shape): (PNG bytes, caption) lists."""
    from keras_clip.data.shapes import generate_shapes

    data = generate_shapes(400, split="val", image_size=64, seed=1)
    images, captions = [], []
    for target in TARGETS:
        i = next(i for i, c in enumerate(data["captions"])
                 if c.endswith(target) and c.count(" ") == 3)  # "a large red square"
        images.append(tf.io.encode_png(data["images"][i]).numpy())
        captions.append(data["captions"][i])
    return images, captions


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    webdriver, chromium, chromedriver = _browser_or_skip()
    from selenium.webdriver.chrome.service import Service

    from export import saved_model as sm
    from export import serving_config as sc
    from keras_clip.train import train_clip

    root = tmp_path_factory.mktemp("page")
    keras.utils.set_random_seed(0)
    model, _ = train_clip("ViT-Tiny", epochs=1, batch_size=64, steps_per_epoch=150,
                          logdir=str(root / "train"), learning_rate=2e-3, warmup_steps=10,
                          eval_examples=0, xla=False, verbose=0)
    images, captions = _scenes()
    index, ids, _ = build_index(model, images, str(root / "collection"), captions=captions)
    sm.export_clip(model, str(root / "clip"), index=index, warmup=False)
    config = sc.write_models_config(str(root / "models.config"), {"clip": "/models/clip"})
    server = Server(["--model-config", config, "--ui", "--index", index])

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    browser = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    browser.set_page_load_timeout(60)
    try:
        yield dict(browser=browser, url=server.url, ids=ids, images=images, captions=captions,
                   root=root, index=index)
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)
        assert server.stop() == 0


def _results(page, submit, timeout=120):
    """Run ``submit()`` on a fresh page load; wait for results or an error; returns
    ([(id, score)], status text)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = page["browser"]
    browser.get(page["url"] + "/ui/")
    submit(browser)
    WebDriverWait(browser, timeout).until(
        lambda b: b.find_element(By.ID, "status").get_attribute("class") in ("ok", "error"))
    figures = browser.find_elements(By.CSS_SELECTOR, "#results figure.result")
    return ([(f.get_attribute("data-id"), float(f.get_attribute("data-score"))) for f in figures],
            browser.find_element(By.ID, "status").text)


def _type(text, k=None):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def submit(browser):
        if k is not None:
            box = browser.find_element(By.ID, "k")
            box.clear()
            box.send_keys(str(k))
        browser.find_element(By.ID, "query").send_keys(text + Keys.ENTER)
    return submit


def test_typing_a_caption_puts_the_right_image_first(page):
    from selenium.webdriver.common.by import By

    ranked = []
    for i, caption in enumerate(page["captions"]):
        found, status = _results(page, _type(caption, k=6))
        assert len(found) == 6, status
        scores = [s for _, s in found]
        assert scores == sorted(scores, reverse=True)
        ranked.append([f for f, _ in found].index(page["ids"][i]))
    # Every caption finds its own scene first.
    assert ranked == [0] * len(page["captions"]), list(zip(page["captions"], ranked))
    # The thumbnails are the collection's images, loaded by the browser from /images/<id>.
    browser = page["browser"]
    first = browser.find_element(By.CSS_SELECTOR, "#results figure.result img")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                  first) == 64
    shot = os.path.join(page["root"], "search_page.png")
    found, _ = _results(page, _type(page["captions"][0], k=6))
    assert browser.save_screenshot(shot)
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("SEARCH_PAGE_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SEARCH_PAGE_SCREENSHOT"])


def test_query_by_example_image(page):
    from selenium.webdriver.common.by import By

    path = os.path.join(page["root"], "query.png")
    with open(path, "wb") as f:
        f.write(page["images"][3])

    def upload(browser):
        box = browser.find_element(By.ID, "k")
        box.clear()
        box.send_keys("3")
        browser.find_element(By.ID, "example").send_keys(path)  # searches on change

    found, status = _results(page, upload)
    assert len(found) == 3 and found[0][0] == page["ids"][3], status
    assert found[0][1] == pytest.approx(1.0, abs=2e-3)
    assert "query.png" in status


def test_bad_k_shows_the_servers_error(page):
    found, status = _results(page, _type("a red square", k=7))
    assert found == []
    assert "k must be between 1 and the collection size (6 images), got [7]" in status
    found, status = _results(page, _type("a red square", k=0))  # checked by the page itself
    assert found == [] and "k must be a whole number of at least 1" in status
    found, status = _results(page, _type("", k=2))
    assert found == [] and "type a description or choose an example image" in status
