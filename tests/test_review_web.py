"""The review page (`winnow review serve`) driven in a real headless Chromium through Selenium:
the real server in a subprocess on a free port, a real lake in a temp WINNOW_HOME. Keys and
clicks in the page must change the lake's review_queue rows; two sessions must both land.

These tests fail, not skip, when Debian's chromium / chromium-driver are missing: `.ci/run`
installs them, and a review page nobody tested in a browser is not tested.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from winnow.flows import review_app
from winnow.tasks import batches, lake, report, review, review_media
from winnow.tasks.data.dataset import Dataset

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
REVIEWER = "tester"
N_IMAGES = 12
pytestmark = pytest.mark.timeout(600)


# ---------------------------------------------------------------- a lake with a queue


def _digits_batch() -> tuple[str, Dataset]:
    from winnow.tasks.data.sources import load_digits

    ds = load_digits()
    batch_id = batches.stage(ds)
    batches.commit(batch_id)
    return batch_id, ds


def _series_batch() -> str:
    """Signals (C, L), not pictures: their cards must say "no image"."""
    rng = np.random.default_rng(0)
    ds = Dataset("series", np.array([f"s{i}" for i in range(6)], dtype=object), rng.random((6, 3, 50), dtype=np.float32),
                 np.array([0, 1, 0, 1, 0, 1]), np.array(["train"] * 6, dtype=object), ["normal", "anomaly"])
    batch_id = batches.stage(ds)
    batches.commit(batch_id)
    return batch_id


def queue_rows(batch_id: str, ds: Dataset, n: int, run_id: str) -> pd.DataFrame:
    """``n`` training samples of ``ds`` flagged as if by the on-arrival flow (given label shifted by
    one for even rows, so a relabel to the true class is the reviewer's fix)."""
    idx = np.flatnonzero(ds.split == "train")[:n]
    true = ds.label[idx]
    given = np.where(np.arange(n) % 2 == 0, (true + 1) % ds.num_classes, true)
    ranks = [{"confident": i + 1, "loss": (n - i) * 3} for i in range(n)]
    return pd.DataFrame({
        "sample_id": ds.sample_id[idx].astype(str), "batch_id": batch_id, "run_id": run_id,
        "given_label": given.astype(np.int64), "suggested_label": true.astype(np.int64),
        "given_class": [ds.class_names[g] for g in given], "suggested_class": [ds.class_names[t] for t in true],
        "score": np.linspace(3, 1, n),
        "scores": [json.dumps({"confident": float(s), "loss": float(s) / 2}) for s in np.linspace(3, 1, n)],
        "ranks": [json.dumps(r) for r in ranks], "status": "pending", "new_label": np.full(n, -1, np.int64),
        "created_at": "2026-11-30T00:00:00+00:00", "decided_at": "", "decided_by": ""})


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("review-web-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WINNOW_HOME", str(root))
        batch_id, ds = _digits_batch()
        series_id = _series_batch()
        series = batches.load_committed(series_id)
        rows = pd.concat([queue_rows(batch_id, ds, N_IMAGES, "flowrun-aaaa"),
                          queue_rows(series_id, series, 2, "flowrun-bbbb")], ignore_index=True)
        # the explain flow's five-panel picture of the second sample
        panel = root / "reports" / "audit1" / "explain" / "panel.png"
        panel.parent.mkdir(parents=True)
        panel.write_bytes(report.png_bytes(np.random.default_rng(1).random((16, 80)), 400))
        lake.replace("explanations", pd.DataFrame({
            "run_id": ["audit1"], "sample_id": [rows.sample_id[1]], "image_path": [str(panel)],
            "created_at": [pd.Timestamp.now(tz="UTC")]}), part="audit1")
        yield root, rows


@pytest.fixture
def queue(home, monkeypatch):
    """A fresh, all-pending queue in the module's lake (the server reads it on every request)."""
    root, rows = home
    monkeypatch.setenv("WINNOW_HOME", str(root))
    review._queue_path().unlink(missing_ok=True)
    review.enqueue(rows)
    return rows


@pytest.fixture(scope="module")
def server(home):
    """`winnow review serve --port 0` in a subprocess; yields its URL (the one it prints)."""
    root, _ = home
    log = root / "serve.log"
    env = dict(os.environ, WINNOW_HOME=str(root))
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "winnow.flows.cli", "review", "serve", "--port", "0",
                                 "--reviewer", REVIEWER], env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not (found := re.search(r"review page: (http://127\.0\.0\.1:\d+/)", log.read_text())):
            assert proc.poll() is None and time.time() < deadline, f"server did not start: {log.read_text()[-2000:]}"
            time.sleep(0.2)
        url = found.group(1)
        while True:
            try:
                urllib.request.urlopen(url + "api/state", timeout=5).read()
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None and time.time() < deadline, f"server never answered: {log.read_text()[-2000:]}"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def make_driver(profile: Path):
    """Headless Chromium through Selenium, with the Debian binaries named explicitly (Selenium
    Manager must not try to download a browser or a driver)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.fail(f"headless browser missing: {missing} (apt-get install chromium chromium-driver; .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1000", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


@pytest.fixture
def driver(tmp_path):
    d = make_driver(tmp_path / "profile-a")
    yield d
    d.quit()


def open_page(driver, url: str):
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))


def press(driver, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(keys).perform()


def focused_id(driver) -> str | None:
    return driver.execute_script("return document.activeElement.dataset.sampleId || null")


def wait_for_lake(expect: dict[str, tuple[str, int]], timeout: float = 20) -> pd.DataFrame:
    """Poll the lake until every sample id has (status, new_label); fail with what it has."""
    deadline = time.time() + timeout
    while True:
        q = review.read_queue().set_index("sample_id")
        now = {s: (q.at[s, "status"], int(q.at[s, "new_label"])) for s in expect}
        if now == expect:
            return q
        assert time.time() < deadline, f"lake rows {now}, expected {expect}"
        time.sleep(0.1)


def card_status(driver, sample_id: str) -> str:
    return driver.execute_script(f"return document.querySelector('.card[data-sample-id=\"{sample_id}\"]').dataset.status "
                                 f"|| 'pending'")


# ---------------------------------------------------------------- the page in a browser


def test_keys_click_and_reload_change_the_lake(queue, server, driver):
    ids = queue["sample_id"].tolist()
    open_page(driver, server)
    cards = driver.find_elements("css selector", ".card")
    assert [c.get_attribute("data-sample-id") for c in cards] == ids
    assert focused_id(driver) == ids[0]  # the first pending card has focus on load
    assert len(driver.find_elements("css selector", ".card .noimage")) == 2  # the two signals
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20).until(lambda d: d.execute_script(  # thumbnails drawn from the lake's pixels
        "return [...document.querySelectorAll('.card img.thumb')].slice(0, 3).every(i => i.complete && i.naturalWidth >= 64)"))
    assert driver.find_element("id", "progress-text").text == f"0 / {len(ids)} reviewed"

    press(driver, "a")                     # ids[0]: accept, focus moves on
    wait_for_lake({ids[0]: ("accepted", -1)})
    assert focused_id(driver) == ids[1]
    press(driver, "d")                     # ids[1]: drop
    press(driver, "5")                     # ids[2]: relabel to 5 with a digit
    assert int(queue.given_label[2]) != 5
    q = wait_for_lake({ids[1]: ("dropped", -1), ids[2]: ("relabelled", 5)})
    assert set(q.loc[ids[:3], "decided_by"]) == {REVIEWER}
    assert all(q.loc[ids[:3], "decided_at"].str.startswith("20"))

    assert focused_id(driver) == ids[3]
    assert int(queue.given_label[3]) != 7
    driver.find_element("css selector", "#picker button[data-label='7']").click()  # ids[3]: click a class
    wait_for_lake({ids[3]: ("relabelled", 7)})
    press(driver, "u")                     # undo the click: pending again, nobody's decision
    q = wait_for_lake({ids[3]: ("pending", -1)})
    assert q.at[ids[3], "decided_by"] == "" and q.at[ids[3], "decided_at"] == ""
    WebDriverWait(driver, 10).until(lambda d: focused_id(d) == ids[3])  # undo shows the undone card

    driver.refresh()  # a reload shows what the lake holds
    open_page(driver, server)
    assert [card_status(driver, s) for s in ids[:4]] == ["accepted", "dropped", "relabelled", "pending"]
    assert focused_id(driver) == ids[3]     # the first pending card again
    assert driver.find_element("id", "progress-text").text == f"3 / {len(ids)} reviewed"
    assert driver.find_element("id", "precision").text.startswith("est. precision 0.67")  # 2 of 3 were wrong labels
    assert "relabelled → 5" in driver.find_element("css selector", f".card[data-sample-id='{ids[2]}'] .status").text


def test_filters_and_the_focused_sample(queue, server, driver):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    ids = queue["sample_id"].tolist()
    review.decide([ids[4]], "drop", by="cli")  # decided outside the page: it shows on load
    open_page(driver, server)
    Select(driver.find_element("id", "filter-status")).select_by_value("dropped")
    shown = [c.get_attribute("data-sample-id") for c in driver.find_elements("css selector", ".card:not([hidden])")]
    assert shown == [ids[4]]
    Select(driver.find_element("id", "filter-status")).select_by_value("")
    cls = queue.given_class[0]
    Select(driver.find_element("id", "filter-class")).select_by_value(cls)
    shown = [c.get_attribute("data-sample-id") for c in driver.find_elements("css selector", ".card:not([hidden])")]
    assert shown == queue.loc[queue.given_class == cls, "sample_id"].tolist()
    Select(driver.find_element("id", "filter-class")).select_by_value("")
    Select(driver.find_element("id", "filter-scorer")).select_by_value("loss")  # loss flags the deepest ones only
    shown = [c.get_attribute("data-sample-id") for c in driver.find_elements("css selector", ".card:not([hidden])")]
    expect = [s for s, by in zip(queue.sample_id, review.flagged_by(queue)) if "loss" in by]
    assert 0 < len(shown) < len(ids) and set(shown) == set(expect)
    Select(driver.find_element("id", "filter-scorer")).select_by_value("")

    driver.find_element("css selector", f".card[data-sample-id='{ids[1]}']").click()
    assert focused_id(driver) == ids[1]
    big = driver.find_element("css selector", "#inspector img.big")
    assert big.size["width"] >= 200  # large on focus (the card's thumbnail is 96 px)
    WebDriverWait(driver, 10).until(lambda d: d.execute_script(  # the explain flow's panels, served from reports/
        "const i = document.querySelector('#inspector img.explanation'); return !!i && i.complete && i.naturalWidth > 0"))
    assert "confident" in driver.find_element("id", "inspector").text
    driver.find_element("css selector", f".card[data-sample-id='{ids[-1]}']").click()  # a signal
    assert driver.find_elements("css selector", "#inspector .big-noimage")
    press(driver, "5")  # the signals have 2 classes: refused in the page, focus stays, nothing written
    assert "no class 5" in driver.find_element("id", "toast").text and focused_id(driver) == ids[-1]
    time.sleep(1)
    assert review.read_queue().set_index("sample_id").at[ids[-1], "status"] == "pending"


def test_two_sessions_deciding_different_samples_both_land(queue, server, driver, tmp_path):
    ids = queue["sample_id"].tolist()
    other = make_driver(tmp_path / "profile-b")
    try:
        open_page(driver, server)
        open_page(other, server)
        driver.find_element("css selector", f".card[data-sample-id='{ids[0]}']").click()
        other.find_element("css selector", f".card[data-sample-id='{ids[1]}']").click()
        press(driver, "a")
        press(other, "d")
        driver.find_element("css selector", f".card[data-sample-id='{ids[2]}']").click()
        other.find_element("css selector", f".card[data-sample-id='{ids[3]}']").click()
        press(other, "4" if int(queue.given_label[3]) != 4 else "6")
        press(driver, "d")
        new3 = 4 if int(queue.given_label[3]) != 4 else 6
        wait_for_lake({ids[0]: ("accepted", -1), ids[1]: ("dropped", -1), ids[2]: ("dropped", -1),
                       ids[3]: ("relabelled", new3)})
        # each tab sees the other's decisions (it polls the lake)
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, 15).until(lambda d: card_status(d, ids[1]) == "dropped" and card_status(d, ids[3]) == "relabelled")
        WebDriverWait(other, 15).until(lambda d: card_status(d, ids[0]) == "accepted")
    finally:
        other.quit()

    # a tab that had not seen ids[0] decided cannot silently overwrite it
    body = json.dumps({"sample_id": ids[0], "action": "drop", "by": "stale", "expect": ""}).encode()
    req = urllib.request.Request(server + "api/decide", body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 409 and json.loads(err.value.read())["state"]["status"] == "accepted"
    assert review.read_queue().set_index("sample_id").at[ids[0], "status"] == "accepted"


def test_server_refuses_foreign_hosts_and_form_posts(queue, server):
    req = urllib.request.Request(server + "api/state", headers={"Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 403
    form = urllib.request.Request(server + "api/decide", b"sample_id=x&action=drop",
                                  {"Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(form, timeout=10)
    assert err.value.code == 415
    assert set(review.read_queue()["status"]) == {"pending"}


# ---------------------------------------------------------------- the pieces, without a browser


def test_old_queue_parts_read_with_an_empty_decided_by(fresh_home):
    old = queue_rows("b", _toy(), 3, "r").drop(columns="decided_by")
    lake.replace(review.TABLE, old, part=review.PART)
    q = review.read_queue()
    assert list(q.columns) == review.COLUMNS and set(q["decided_by"]) == {""}
    review.decide([q.sample_id[0]], "accept", by="ann")
    assert review.read_queue().set_index("sample_id").at[q.sample_id[0], "decided_by"] == "ann"


def test_decide_refuses_a_stale_view(fresh_home):
    review.enqueue(queue_rows("b", _toy(), 3, "r"))
    sid = review.read_queue().sample_id[0]
    first = review.decide([sid], "relabel", 2, by="ann", expect_decided_at="")
    with pytest.raises(review.DecisionConflict, match=r"relabelled by ann") as err:
        review.decide([sid], "drop", by="bob", expect_decided_at="")
    assert err.value.row["decided_by"] == "ann"
    review.decide([sid], "pending", by="ann", expect_decided_at=first.decided_at.iloc[0])  # undo with the right view
    row = review.read_queue().set_index("sample_id").loc[sid]
    assert (row.status, row.new_label, row.decided_by, row.decided_at) == ("pending", -1, "", "")
    with pytest.raises(ValueError, match="non-empty strings"):
        review.decide([], "accept")


def test_progress_and_precision():
    p = review.progress(["pending", "accepted", "relabelled", "dropped", "relabelled"])
    assert (p["flagged"], p["reviewed"], p["pending"]) == (5, 4, 1)
    assert p["precision"] == pytest.approx(0.75)
    assert p["precision_low"] < 0.75 < p["precision_high"] <= 1.0
    assert p["precision_low"] == pytest.approx(0.3006, abs=1e-3)  # Wilson 95% for 3 of 4
    assert review.progress(["pending"])["precision"] is None
    with pytest.raises(ValueError, match="unknown value"):
        review.progress(["maybe"])


def test_flagged_by_uses_the_primary_scorers_depth():
    q = queue_rows("b", _toy(), 6, "r")  # confident ranks 1..6 (primary), loss ranks 18, 15, ..., 3
    assert review.flagged_by(q) == [["confident"]] * 4 + [["confident", "loss"]] * 2


def test_select_run_and_thumbnails():
    q = pd.concat([queue_rows("batch-one", _toy(), 2, "flow-1111"), queue_rows("batch-two", _toy(), 2, "flow-2222")])
    assert len(review_app.select_run(q, "flow-2222")) == 2
    assert len(review_app.select_run(q, "batch-on")) == 2
    arrivals = pd.DataFrame({"run_id": ["abcd1234"], "mlflow_run_id": ["m1"], "batch_id": ["batch-two"]})
    assert set(review_app.select_run(q, "abcd", arrivals)["batch_id"]) == {"batch-two"}
    with pytest.raises(ValueError, match="no sample in review_queue"):
        review_app.select_run(q, "zzzz")
    assert review_media.thumbnail_png(np.zeros((3, 50), np.float32), (0, 1)) is None  # a signal
    png = review_media.thumbnail_png(np.full((1, 8, 8), 255, np.uint8), (0, 255), size=64)
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(png)) as img:
        assert img.size == (64, 64) and img.getextrema() == (255, 255)
    assert review_app.is_loopback("::1") and review_app.is_loopback("localhost") and not review_app.is_loopback("0.0.0.0")


def test_report_links_to_the_review_page():
    url = review_app.review_url("batch-one")
    page = report.render("r", "t", True, "ok", [], pd.DataFrame(), np.zeros((0, 1, 1, 1)), {}, None, [],
                         review=(url, "winnow review serve --run batch-one"))
    assert url == "http://127.0.0.1:8765/?run=batch-one" and f"href='{url}'" in page


def test_package_data_ships_the_page():
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()  # tomllib needs Python 3.11; 3.10 is supported
    globs = json.loads(re.search(r'^"winnow\.tasks" = (\[.*\])$', text, re.M).group(1))
    shipped = {p.name for g in globs if g.startswith("review_web/") for p in review_app.static_dir().parent.glob(g)}
    assert shipped == {p.name for p in review_app.static_dir().iterdir()} >= {"index.html", "review.js", "review.css"}


def _toy() -> Dataset:
    return Dataset("toy", np.array([f"t{i}" for i in range(8)], dtype=object), np.zeros((8, 1, 4, 4), np.float32),
                   np.arange(8) % 3, np.array(["train"] * 8, dtype=object), ["a", "b", "c"])


WRITER = """
import sys
from winnow.tasks import review
ids = sys.argv[1].split(",")
for i in range(int(sys.argv[2])):
    review.decide([ids[i % len(ids)]], "accept" if i % 2 else "pending", by="w" * (i % 5))
"""


def test_the_queue_reads_whole_while_another_process_rewrites_it(fresh_home):
    """The page polls the queue while decisions rename new parts into place: no read may mix two files."""
    review.enqueue(queue_rows("b", _toy(), 8, "r"))
    ids = review.read_queue().sample_id.tolist()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, ",".join(ids), "300"], stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, WINNOW_HOME=str(fresh_home)))
    reads = 0
    while writer.poll() is None:
        assert len(review.read_queue()) == 8
        reads += 1
    assert writer.returncode == 0, writer.stderr.read()[-2000:]
    assert reads > 10
