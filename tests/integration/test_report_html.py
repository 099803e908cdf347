"""The HTML tearsheet opens offline in a real browser, and its charts draw.

Headless Chromium (Debian's /usr/bin/chromium) loads the file with the network cut off, runs its
scripts, dumps the DOM and saves a screenshot. The charts drew if plotly rendered its SVG (or WebGL
canvas, for big series) inside the figure div and the screenshot shows the lines; the page needed
nothing from the network if Chromium's net log holds no request that the page started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import types
import zlib
from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from farmkit import report

pytestmark = pytest.mark.service

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_S = 120
EQUITY_BLUE, DRAWDOWN_RED = (31, 119, 180), (214, 39, 40)


def chromium_or_skip() -> str:
    """Chromium's path. Missing: skipped with the reason on a laptop, a failure under CI=true."""
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path:
        return path
    reason = f"Chromium not found at {CHROMIUM} or on PATH; install it with `apt-get install -y chromium`"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def offline_prefix() -> list[str]:
    # A new network namespace has only a loopback that is down: nothing leaves the machine. Where
    # user namespaces are not allowed, the dead proxy passed to Chromium still makes every request fail.
    try:
        probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return ["unshare", "-rn"] if probe.returncode == 0 else []


@dataclass
class Browsed:
    dom: str
    screenshot: Path
    page_requests: list[str]


def browse(page: Path, workdir: Path) -> Browsed:
    netlog, png = workdir / "netlog.json", workdir / "screenshot.png"
    command = [
        *offline_prefix(), chromium_or_skip(),
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={workdir / 'profile'}",
        "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
        "--enable-unsafe-swiftshader",                  # software WebGL for scattergl: no GPU here
        "--virtual-time-budget=10000",                  # let the inline 5 MB of plotly.js run and draw
        "--window-size=1280,1100", "--hide-scrollbars",
        f"--log-net-log={netlog}", f"--screenshot={png}", "--dump-dom", page.as_uri(),
    ]
    # Own session, so a hung browser is ended with its renderer and GPU processes, by group id.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        dom, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"Chromium did not finish within {TIMEOUT_S} s on {page}")
    assert proc.returncode == 0 and png.exists(), f"Chromium exited {proc.returncode}:\n{stderr[-3000:]}"
    return Browsed(dom, png, page_requests(netlog))


def page_requests(netlog: Path) -> list[str]:
    # Chromium's own background requests carry the initiator "not an origin"; whatever the page
    # asked for (script, font, image, fetch) carries the page's origin ("null" for a file:// page).
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [event["params"]["url"] for event in log["events"]
            if event["type"] == start_job and "url" in event.get("params", {})
            and event["params"].get("initiator") != "not an origin"
            and not event["params"]["url"].startswith(("file:", "data:", "blob:"))]


class FigureElements(HTMLParser):
    """(tag, attributes) of every element inside the figure div; script text is never parsed as tags."""

    def __init__(self, div_id: str):
        super().__init__()
        self.div_id, self.depth, self.root, self.elements = div_id, 0, {}, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if self.depth:
            self.elements.append((tag, attrs))
            self.depth += tag == "div"
        elif tag == "div" and attrs.get("id") == self.div_id:
            self.depth, self.root = 1, attrs

    def handle_endtag(self, tag):
        if self.depth and tag == "div":
            self.depth -= 1

    def count(self, tag: str, css_class: str) -> int:
        return sum(1 for t, a in self.elements if t == tag and css_class in a.get("class", "").split())


def figure_elements(dom: str) -> FigureElements:
    parser = FigureElements("tearsheet")
    parser.feed(dom)
    assert parser.root, "the figure div is not in the DOM"
    return parser


def png_rgb(path: Path) -> np.ndarray:
    """Pixels of an 8-bit RGB(A) PNG as (height, width, 3); enough of PNG for a browser screenshot."""
    data = path.read_bytes()
    pos, idat = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    assert depth == 8 and colour in (2, 6) and not interlace, "unexpected PNG format"
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, stride + 1)
    out = np.zeros((height + 1, stride), np.uint8)             # row 0 stands for "above the image"
    for y in range(height):
        kind, line, up = raw[y, 0], raw[y, 1:], out[y]
        if kind == 0:
            row = line
        elif kind == 1:                                         # Sub: a running sum per channel
            row = line.reshape(width, bpp).cumsum(axis=0, dtype=np.uint64).astype(np.uint8).ravel()
        elif kind == 2:                                         # Up
            row = line + up
        else:                                                   # Average, Paeth: left to right
            row, line_b, up_b = bytearray(stride), line.tobytes(), up.tobytes()
            for i in range(stride):
                a, b = (row[i - bpp], up_b[i]) if i >= bpp else (0, up_b[i])
                if kind == 3:
                    row[i] = (line_b[i] + ((a + b) >> 1)) & 0xFF
                else:
                    c = up_b[i - bpp] if i >= bpp else 0
                    pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                    row[i] = (line_b[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
            row = np.frombuffer(bytes(row), np.uint8)
        out[y + 1] = row
    return out[1:].reshape(height, width, bpp)[:, :, :3]


def pixels_near(image: np.ndarray, rgb: tuple[int, int, int]) -> int:
    return int((np.abs(image.astype(int) - rgb).sum(axis=2) < 40).sum())


def assert_not_blank(image: np.ndarray) -> None:
    assert (image.min(axis=2) < 230).mean() > 0.02, "the screenshot is (almost) all white"
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50, "the screenshot has hardly any colours"


# A stand-in with the result's attributes; the real engine result is exercised by the engine's tests.
def fake_result(bars: int, freq: str):
    rng = np.random.default_rng(11)
    index = pd.date_range("2024-01-02 14:30", periods=bars, freq=freq, tz="UTC")
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, bars)))
    equity = pd.Series(100_000 * np.exp(np.cumsum(rng.normal(0, 0.002, bars))), index=index)
    at = np.linspace(bars // 10, bars - bars // 10, 6).astype(int)
    sides = ["buy", "sell"] * 3
    position = pd.Series(0.0, index=index)
    for start, end in zip(at[0::2], at[1::2]):
        position.iloc[start:end] = 100.0
    orders = pd.DataFrame({
        "symbol": "AAPL", "side": sides + ["buy"], "status": ["filled"] * 6 + ["cancelled"],
        "executed_at": list(index[at]) + [pd.NaT], "executed_price": list(close[at]) + [np.nan],
        "size": [100.0, -100.0] * 3 + [5.0], "reason": ["entry", "exit"] * 3 + [None],
    })
    return types.SimpleNamespace(
        run_id="run-html-42", strategy="breakout", metrics={"total_return": 0.05, "sharpe": 0.9},
        prices={"AAPL": pd.DataFrame({"open": close, "high": close * 1.001, "low": close * 0.999,
                                      "close": close, "volume": 500.0}, index=index)},
        equity=equity, drawdown=equity / equity.cummax() - 1,
        positions=pd.DataFrame({"AAPL": position}), orders=orders,
    )


def test_the_tearsheet_draws_offline_in_chromium(tmp_path):
    result = fake_result(bars=250, freq="1D")
    browsed = browse(report.to_html(result, tmp_path / "out" / "run.html"), tmp_path)

    assert browsed.page_requests == []
    figure = figure_elements(browsed.dom)
    assert "js-plotly-plot" in figure.root["class"].split()      # Plotly.newPlot ran on the div
    assert figure.count("svg", "main-svg") >= 1
    assert figure.count("path", "box") == 250                     # one candle per bar
    # candles, buys, sells, equity, buy and hold, drawdown, exposure (no trades: that panel is empty)
    assert figure.count("g", "trace") == 7
    assert figure.count("g", "hm") == 1                           # the monthly returns heatmap
    assert figure.count("path", "point") == 6                     # one marker per completed fill
    drawn_lines = [a for t, a in figure.elements
                   if t == "path" and "js-line" in a.get("class", "").split() and len(a.get("d", "")) > 200]
    assert len(drawn_lines) >= 4                                  # equity, buy and hold, drawdown, exposure
    titles = [a.get("data-unformatted", "") for t, a in figure.elements if t == "text"]
    assert any("run-html-42" in title for title in titles)
    assert_not_blank(png_rgb(browsed.screenshot))


def test_a_tearsheet_on_the_shared_bundle_draws_offline_in_chromium(tmp_path):
    runs = tmp_path / "runs"
    page = report.to_html(fake_result(bars=250, freq="1D"), runs / "run-1" / "tearsheet.html", plotlyjs=runs)
    browsed = browse(page, tmp_path)

    assert browsed.page_requests == []                            # plotly.js came from ../, not the network
    figure = figure_elements(browsed.dom)
    assert "js-plotly-plot" in figure.root["class"].split()
    assert figure.count("path", "box") == 250
    assert_not_blank(png_rgb(browsed.screenshot))


def test_big_series_draw_with_webgl_in_chromium(tmp_path):
    result = fake_result(bars=60_000, freq="1min")
    browsed = browse(report.to_html(result, tmp_path / "big.html"), tmp_path)

    assert browsed.page_requests == []
    figure = figure_elements(browsed.dom)
    assert figure.count("canvas", "gl-canvas") >= 1
    assert figure.count("path", "point") == 6                     # markers stay SVG, all of them
    image = png_rgb(browsed.screenshot)
    assert_not_blank(image)
    # The legend swatches alone are a few dozen pixels: thousands mean WebGL drew the lines.
    assert pixels_near(image, EQUITY_BLUE) > 1_000
    assert pixels_near(image, DRAWDOWN_RED) > 1_000


def test_the_network_check_sees_what_a_page_fetches(tmp_path):
    # Control: a page that needs a CDN shows up in the net log and draws nothing offline.
    page = tmp_path / "cdn.html"
    page.write_text('<!DOCTYPE html><html><head><script src="https://cdn.plot.ly/plotly-2.35.2.min.js">'
                    '</script></head><body><div id="tearsheet"></div><script>'
                    'Plotly.newPlot("tearsheet", [{y: [1, 2, 3]}]);</script></body></html>')
    browsed = browse(page, tmp_path)

    assert browsed.page_requests == ["https://cdn.plot.ly/plotly-2.35.2.min.js"]
    assert Counter(t for t, _ in figure_elements(browsed.dom).elements)["svg"] == 0
