"""How long the review page (`winnow review serve`) takes to load a large queue, in a real
headless Chromium driven by Selenium; optionally a screenshot of it.

    python benchmarks/review_web_load.py --n 1000 --repeats 5
    python benchmarks/review_web_load.py --home /path/to/WINNOW_HOME --screenshot docs/review-web.png

Without ``--home`` it builds a temporary lake: Fashion-MNIST (Debian's dataset-fashion-mnist;
digits, repeated under new ids, if absent) committed as one batch, and ``--n`` of its training
samples queued as flagged (every 10th given a wrong label). With ``--home`` it serves that lake's
queue as it is.

Timed per load (the browser and the server are started once; the first load is cold: the server
reads the batch from the lake and draws the first thumbnails): from ``driver.get`` to the page
saying it is ready (every card built, the first pending card focused), the page's own
fetch-and-render time, until the thumbnails in view have loaded, and the size of ``/api/queue``.
Then one key press: from ``a`` to the decision being in the lake's ``review_queue``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def build_lake(n: int) -> str:
    """Commit a batch and queue ``n`` of its training samples; returns the batch id."""
    from winnow.tasks import batches, review
    from winnow.tasks.data import sources

    try:
        ds = sources.load_fashion_mnist(limit=max(n, 1000))
    except (FileNotFoundError, ValueError):
        ds = sources.load_digits()
        reps = int(np.ceil(n / (ds.split == "train").sum())) + 1
        ds = review.concat([ds.replace(sample_id=np.array([f"{s}-r{r}" for s in ds.sample_id], dtype=object))
                            for r in range(reps)], ds.name)
    batch_id = batches.stage(ds)
    batches.commit(batch_id)
    idx = np.flatnonzero(ds.split == "train")[:n]
    if len(idx) < n:
        raise ValueError(f"--n {n}: only {len(idx)} training samples available")
    rng = np.random.default_rng(0)
    true = ds.label[idx]
    given = np.where(np.arange(n) % 10 == 0, (true + 1) % ds.num_classes, true)
    scores = np.sort(rng.random(n) * 5)[::-1]
    review.enqueue(pd.DataFrame({
        "sample_id": ds.sample_id[idx].astype(str), "batch_id": batch_id, "run_id": "bench",
        "given_label": given, "suggested_label": true, "given_class": [ds.class_names[g] for g in given],
        "suggested_class": [ds.class_names[t] for t in true], "score": scores,
        "scores": [json.dumps({"confident": float(s), "loss": float(s) * 0.8}) for s in scores],
        "ranks": [json.dumps({"confident": i + 1, "loss": int(r)}) for i, r in enumerate(rng.permutation(n) + 1)],
        "status": "pending", "new_label": np.full(n, -1, np.int64), "created_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "decided_at": "", "decided_by": ""}))
    return batch_id


def start_server(home: Path, log: Path) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, WINNOW_HOME=str(home))
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "winnow.flows.cli", "review", "serve", "--port", "0"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not (m := re.search(r"review page: (http://\S+)", log.read_text())):
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc, m.group(1)


def driver(profile: Path, width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def load_once(d, url: str) -> dict:
    from selenium.webdriver.support.ui import WebDriverWait

    t0 = time.perf_counter()
    d.get(url)
    WebDriverWait(d, 120, poll_frequency=0.02).until(
        lambda x: x.execute_script("return document.body.dataset.ready === 'true'"))
    ready = time.perf_counter() - t0
    WebDriverWait(d, 120, poll_frequency=0.02).until(lambda x: x.execute_script(
        "const h = innerHeight; return [...document.querySelectorAll('.card img.thumb')]"
        ".filter(i => { const r = i.getBoundingClientRect(); return r.top < h && r.bottom > 0; })"
        ".every(i => i.complete)"))
    thumbs = time.perf_counter() - t0
    return {"ready_s": ready, "thumbs_in_view_s": thumbs,
            "page_fetch_render_ms": int(d.execute_script("return document.body.dataset.loadedMs")),
            "cards": d.execute_script("return document.querySelectorAll('.card').length"),
            "focused": d.execute_script("return document.activeElement.dataset.sampleId || null")}


def decision_latency(d) -> float:
    """Seconds from pressing ``a`` on the focused card to its row reading ``accepted`` in the lake."""
    from selenium.webdriver.common.action_chains import ActionChains

    from winnow.tasks import review

    sample_id = d.execute_script("return document.activeElement.dataset.sampleId")
    t0 = time.perf_counter()
    ActionChains(d).send_keys("a").perform()
    while review.read_queue().set_index("sample_id").at[sample_id, "status"] != "accepted":
        if time.perf_counter() - t0 > 30:
            raise RuntimeError("the decision never reached the lake")
        time.sleep(0.005)
    took = time.perf_counter() - t0
    review.decide([sample_id], "pending", by="benchmark")  # leave the queue as it was
    return took


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="cards to queue when building a lake (default 1000)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--home", help="serve this WINNOW_HOME's queue as it is (default: build a temporary lake)")
    ap.add_argument("--screenshot", help="save a PNG of the loaded page here")
    ap.add_argument("--focus", type=int, default=0, help="before the screenshot, move focus this many cards on")
    ap.add_argument("--focus-explained", action="store_true",
                    help="before the screenshot, click the first pending card that has explanation panels")
    ap.add_argument("--size", default="1400,900", help="browser window WIDTH,HEIGHT")
    args = ap.parse_args(argv)
    if args.n <= 0 or args.repeats <= 0:
        raise SystemExit("--n and --repeats must be positive")
    width, height = (int(v) for v in args.size.split(","))
    work = Path(tempfile.mkdtemp(prefix="review-web-load-"))
    home = Path(args.home).resolve() if args.home else work / "home"
    os.environ["WINNOW_HOME"] = str(home)
    if not args.home:
        t0 = time.perf_counter()
        build_lake(args.n)
        print(f"built a lake with {args.n} queued samples in {time.perf_counter() - t0:.1f} s")
    proc, url = start_server(home, work / "serve.log")
    d = None
    try:
        t0 = time.perf_counter()
        body = urllib.request.urlopen(url + "api/queue", timeout=120).read()
        print(f"GET /api/queue (cold): {time.perf_counter() - t0:.3f} s, {len(body) / 1024:.0f} KiB")
        t0 = time.perf_counter()
        urllib.request.urlopen(url + "api/queue", timeout=120).read()
        print(f"GET /api/queue (warm): {time.perf_counter() - t0:.3f} s")
        d = driver(work / "profile", width, height)
        loads = [load_once(d, url) for _ in range(args.repeats)]
        for i, r in enumerate(loads):
            print(f"load {i + 1}: ready {r['ready_s']:.3f} s · thumbnails in view {r['thumbs_in_view_s']:.3f} s · "
                  f"in-page fetch+render {r['page_fetch_render_ms']} ms · {r['cards']} cards · focus {r['focused']}")
        warm = loads[1:] or loads
        print(f"median of loads 2..{len(loads)}: ready {statistics.median(r['ready_s'] for r in warm):.3f} s, "
              f"thumbnails in view {statistics.median(r['thumbs_in_view_s'] for r in warm):.3f} s")
        if not args.home:
            lat = [decision_latency(d) for _ in range(3)]
            print(f"key press 'a' -> row in the lake: {', '.join(f'{v * 1000:.0f}' for v in lat)} ms")
        if args.screenshot:
            from selenium.webdriver.common.action_chains import ActionChains

            load_once(d, url)
            if args.focus:
                ActionChains(d).send_keys("j" * args.focus).perform()
            if args.focus_explained:
                rows = json.loads(urllib.request.urlopen(url + "api/queue", timeout=120).read())["rows"]
                hit = next((r["sample_id"] for r in rows if r["explanation"] and r["status"] == "pending"), None)
                if hit is None:
                    raise SystemExit("--focus-explained: no pending queued sample has an explanation")
                d.find_element("css selector", f".card[data-sample-id='{hit}']").click()
            time.sleep(1.5)  # the inspector's pictures
            dest = Path(args.screenshot)
            dest.parent.mkdir(parents=True, exist_ok=True)
            d.save_screenshot(str(dest))
            print(f"screenshot: {dest}")
    finally:
        if d is not None:
            d.quit()
        proc.terminate()
        proc.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
