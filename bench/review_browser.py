"""Review in a real browser: from a key press to the next item's caption and image on screen.

A store of --n items (bench/store.py's bulk seed), `streamlit run`, Chromium (Playwright) pressing the
review keys as a reviewer would (the next key once the next item shows): mostly A, with edits, rejects
and skips. For each card (`browser`: the review card of curation_app/review_card, keys handled in the
page; `streamlit`: the same page as Streamlit widgets in an st.fragment) it prints the latency from the
key press to the next item's caption and image shown (p50/p95/max), and the decisions recorded in the
store against the decisions pressed, with the targets beside them, in one JSON line.

Run: `python bench/review_browser.py [--n 100000] [--decisions 200] [--cards browser,streamlit]`
(targets: p95 <= 250 ms from key to next item, 0 lost decisions; needs Chromium at /usr/bin/chromium).
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from sqlmodel import func, select
from store import percentiles, seed  # bench/store.py: python puts the script's folder on sys.path

from db.engine import init_store, session_scope
from db.models import Image, ReviewAction, ReviewEvent

REPO = Path(__file__).resolve().parent.parent

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
TARGETS = {"p95_ms": 250, "lost_decisions": 0}
# the moment of the last key press, taken before the app's own listeners see it
STAMP_KEYS = "window.addEventListener('keydown', () => { window.__capKey = performance.now(); }, true);"
# what is on screen: the item id, its caption box and its image; per card
SHOWN = {
    "browser": """() => { const c = document.querySelector('[data-testid="reviewCard"]');
        if (!c) return null; const img = c.querySelector('.cap-img'), t = c.querySelector('.cap-caption');
        return {id: c.dataset.item || '', caption: t.value, src: img.getAttribute('src') || '',
                img: img.complete && img.naturalWidth > 0, pending: Number(c.dataset.pending || 0),
                queued: Number(c.dataset.queued || 0),
                errors: c.querySelectorAll('.cap-error').length}; }""",
    "streamlit": """() => { const cap = [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
          .map(e => /^Item (\\d+) ·/.exec(e.textContent)).find(Boolean);
        if (!cap) return null; const id = cap[1];
        const t = document.querySelector(`[class*="st-key-caption-${id}-"] textarea`);
        const img = document.querySelector('[data-testid="stImage"] img, [data-testid="stFullScreenFrame"] img');
        return {id, caption: t ? t.value : '', src: img ? img.getAttribute('src') : '',
                img: !!img && img.complete && img.naturalWidth > 0, pending: 0, queued: 1, errors: 0}; }""",
}


def plan(n: int, card: str) -> list[str]:
    """The actions, in order: mostly approve, every 10th an edit, 7th a reject, 9th a skip (the streamlit
    card: approve, skip and edit; its reject reason is a select box, not a key)."""
    out = []
    for i in range(1, n + 1):
        if i % 10 == 0:
            out.append("edit")
        elif i % 7 == 0:
            out.append("reject" if card == "browser" else "skip")
        elif i % 9 == 0:
            out.append("skip")
        else:
            out.append("approve")
    return out


def press(page, card: str, action: str, caption: str) -> None:
    """The keys of one decision; the last key is the one timed."""
    kb = page.keyboard
    if action == "approve":
        kb.press("a")
    elif action == "skip":
        kb.press("s")
    elif action == "reject":
        kb.press("x")
        kb.press("1")
    elif action == "edit":
        if card == "browser":
            kb.press("e")
        else:
            for _ in range(60):
                kb.press("Tab")
                if page.evaluate("document.activeElement && document.activeElement.tagName") == "TEXTAREA":
                    break
        kb.press("Control+a")
        kb.type(caption.rstrip(".") + " in the sun.")
        kb.press("Control+Enter")  # shows the word diff
        page.locator("code", has_text="in the sun.").first.wait_for(timeout=30_000)
        if card == "streamlit":
            page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=30_000)
        kb.press("Control+Enter")


def wait_next(page, card: str, before: dict, timeout_ms: int) -> float | None:
    """Milliseconds from the last key press to the next item shown (caption and image), or None."""
    check = f"""(before) => {{ const s = ({SHOWN[card]})();
        if (!s || s.id === '' || s.id === before.id || !s.caption || !s.img || s.src === before.src) return false;
        window.__capSeen = performance.now(); return true; }}"""
    try:
        page.wait_for_function(check, arg=before, polling="raf", timeout=timeout_ms)
    except Exception:  # Playwright's TimeoutError: the press showed nothing new
        return None
    return page.evaluate("window.__capSeen - window.__capKey")


def run_card(url: str, card: str, *, decisions: int, store_url: str, first_event: int) -> dict:
    from playwright.sync_api import sync_playwright

    reviewer = getpass.getuser() or "local"  # local mode signs in the person at this machine
    done: list[tuple[int, str]] = []
    times: dict[str, list[float]] = {}
    no_next = stalls = cards = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.add_init_script(STAMP_KEYS)
        page.goto(f"{url}/review")
        page.wait_for_function(f"() => {{ const s = ({SHOWN[card]})(); return !!(s && s.id && s.img); }}",
                               timeout=120_000)
        page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=60_000)
        for action in plan(decisions, card):
            before = page.evaluate(f"({SHOWN[card]})()")
            stalls += before["queued"] < 2  # nothing preloaded behind this item: the next comes from the server
            try:
                press(page, card, action, before["caption"])
            except Exception:  # say where, with a screenshot, and stop: a bench must not guess on
                shot = Path(tempfile.gettempdir()) / f"review_browser_{card}_failed.png"
                page.screenshot(path=str(shot))
                print(f"decision {len(done) + 1} ({action}) on {before} failed; screenshot: {shot}", file=sys.stderr)
                raise
            ms = wait_next(page, card, before, timeout_ms=10_000)
            if card == "browser":  # one card on the page (a remount once left a frozen copy above it)
                cards = max(cards, page.evaluate("document.querySelectorAll('[data-testid=\"reviewCard\"]').length"))
            done.append((int(before["id"]), action))
            if ms is None:
                no_next += 1
            else:
                times.setdefault(action, []).append(ms)
        if card == "browser":  # every decision acknowledged by the store (or visibly refused)
            page.wait_for_function(f"() => ({SHOWN[card]})().pending === 0", timeout=120_000)
        else:
            page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=60_000)
        refused = page.evaluate(f"({SHOWN[card]})()")["errors"]
        browser.close()
    engine = init_store(store_url)
    with session_scope(engine) as s:
        events = s.exec(select(ReviewEvent).where(ReviewEvent.id > first_event, ReviewEvent.reviewer == reviewer,
                                                  ReviewEvent.action != ReviewAction.undo)
                        .order_by(ReviewEvent.id)).all()
        stored = [(e.image_id, e.action) for e in events]
    engine.dispose()
    kinds = {"approve": ReviewAction.approve, "edit": ReviewAction.edit_approve, "reject": ReviewAction.reject,
             "skip": ReviewAction.skip}
    pressed = [(i, kinds[a]) for i, a in done]
    every = [t for ts in times.values() for t in ts]
    return {"card": card, "decisions_pressed": len(pressed), "decisions_recorded": len(stored),
            "recorded_as_pressed": stored == pressed,
            "lost_decisions": len(pressed) - len(stored) - refused,
            "visibly_refused": refused, "presses_without_next_item": no_next,
            "presses_with_nothing_preloaded": stalls if card == "browser" else None,
            "cards_on_page_max": cards if card == "browser" else None,
            "latency_ms": percentiles(every) if len(every) > 1 else None,
            "latency_p50_ms_by_action": {a: round(sorted(ts)[len(ts) // 2], 1) for a, ts in times.items()}}


def serve(data_dir: Path, card: str, log: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CAPSTUDIO_DATA_DIR": str(data_dir), "CAPSTUDIO_REVIEW_CARD": card}
    env.pop("CAPSTUDIO_DATABASE_URL", None)
    argv = [sys.executable, "-m", "streamlit", "run", "curation_app/streamlit_app.py", "--server.headless", "true",
            "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none"]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read() == b"ok":
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"streamlit did not start: {log.read_text(errors='replace')[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="items to seed")
    parser.add_argument("--decisions", type=int, default=200, help="decisions pressed per card")
    parser.add_argument("--cards", default="browser,streamlit", help="which cards to measure, in order")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the store here (default: temp); an existing store there is reused")
    args = parser.parse_args()
    from pipeline.hardware import describe_cpu

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="capstudio-bench-review-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    out: dict = {"bench": "review_browser", "items": args.n, "targets": TARGETS, "load_before": os.getloadavg()}
    try:
        store_url = f"sqlite:///{(data_dir / 'studio.db').resolve()}"
        engine = init_store(store_url)
        with session_scope(engine) as s:
            have = s.exec(select(func.count()).select_from(Image)).one()
        if have == 0:
            t0 = time.perf_counter()
            seed(engine, n=args.n)
            out["seed_s"] = round(time.perf_counter() - t0, 1)
        else:  # a store kept by --data-dir: reviewed on from where the last run left it
            out["items"], out["reused_store"] = have, True
        engine.dispose()
        for card in args.cards.split(","):
            engine = init_store(store_url)
            with session_scope(engine) as s:
                first_event = s.exec(select(func.max(ReviewEvent.id))).one() or 0
            engine.dispose()  # closed while the studio runs: one process on the store's log
            proc, url = serve(data_dir, card, data_dir / f"streamlit-{card}.log")
            try:
                out[card] = run_card(url, card, decisions=args.decisions, store_url=store_url,
                                     first_event=first_event)
            finally:
                proc.terminate()
                proc.wait(timeout=10)
            res = out[card]
            res["meets_targets"] = bool(res["latency_ms"] and res["latency_ms"]["p95_ms"] <= TARGETS["p95_ms"]
                                        and res["lost_decisions"] == TARGETS["lost_decisions"])
        out["load_after"] = os.getloadavg()
        out["cpu"] = describe_cpu()
        print(json.dumps(out))
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
