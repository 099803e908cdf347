"""A notebook run by farmkit, shared as nbconvert's HTML (what GitHub and nbviewer show), still shows its
chart: the executed notebook carries a PNG beside plotly's interactive figure (farmkit.figures)."""

import base64
import re
import struct
import time
import zlib
from pathlib import Path

import nbformat
import psutil

from farmkit.research import notebooks
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]
SMA = ROOT / "notebooks" / "strategies" / "sma_crossover.ipynb"
PLOTLY_JSON = "application/vnd.plotly.v1+json"


def _chromium() -> str | None:
    from choreographer.browsers.chromium import Chromium

    return Chromium.find_browser(skip_local=False)


def _pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the unfiltered rows of an 8-bit RGB or RGBA PNG (no Pillow here)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        body = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour = header[:4]
    assert depth == 8 and colour in (2, 6), f"unexpected PNG format: depth {depth}, colour type {colour}"
    step = 3 if colour == 2 else 4
    raw, stride, rows, previous = zlib.decompress(idat), width * step, [], bytes(width * step)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - step] if x >= step else 0
            b, c = previous[x], previous[x - step] if x >= step else 0
            if kind == 1:
                line[x] = (line[x] + a) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + b) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        previous = rows[-1]
    return width, height, [bytes(r[i:i + 3]) for r in rows for i in range(0, stride, step)]


def _our_chromiums(home: Path) -> list:
    found = []
    for process in psutil.process_iter(["name"]):
        try:
            if "chrom" in (process.info["name"] or "") and process.environ().get("FARM_HOME") == str(home):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            continue
    return found


def test_an_executed_notebook_shows_its_chart_as_an_image_in_nbconvert_html(farm_home, monkeypatch):
    from nbconvert import HTMLExporter

    need(_chromium() is not None, "no Chromium for kaleido (apt-get install chromium)")
    monkeypatch.setenv("FARM_FIGURE_IMAGES", "on")
    params = nbformat.read(SMA, as_version=4).metadata["farm"]["ci_parameters"]
    run = notebooks.run(SMA, params, progress=False)
    assert run.status == "done"

    executed = nbformat.read(run.output, as_version=4)
    figures = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if PLOTLY_JSON in o.get("data", {})]
    assert len(figures) == 1, "res.plot() displays one figure"
    assert "image/png" in figures[0]["data"], f"the figure has no static image, only {sorted(figures[0]['data'])}"

    html, _ = HTMLExporter().from_notebook_node(executed)
    images = re.findall(r'<img\b[^>]*\ssrc="data:image/png;base64,([A-Za-z0-9+/=\s]+)"', html)
    assert len(images) == 1, "nbconvert's HTML shows the figure as a PNG"
    width, height, pixels = _pixels(base64.b64decode(images[0]))
    assert width >= 600 and height >= 400, f"a {width}x{height} image is too small to read"
    background = max(set(pixels), key=pixels.count)
    drawn = sum(p != background for p in pixels) / len(pixels)
    assert drawn > 0.02, f"only {drawn:.1%} of the image differs from its background: a blank chart"
    assert len(set(pixels)) > 16, "a chart has lines, fills and text in more than a few colours"

    # The kernel's Chromium ended with the kernel.
    deadline = time.monotonic() + 15
    while (left := _our_chromiums(farm_home.home)) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not left, f"Chromium still runs after the notebook: {[p.pid for p in left]}"


def test_sweep_trials_draw_no_images(farm_home, monkeypatch, tmp_path):
    # A sweep runs the notebook once per trial: no Chromium for each, whatever the setting says.
    monkeypatch.setenv("FARM_FIGURE_IMAGES", "on")
    done = notebooks.run_sweep(SMA, {"fast": [5]}, fixed={"days": 2, "slow": 30}, progress=False)
    (row,) = done.table.to_dict("records")
    assert row["status"] == "done", row
    executed = nbformat.read(farm_home.home / "runs" / row["run_id"] / "notebook.ipynb", as_version=4)
    bundles = [o["data"] for c in executed.cells if c.cell_type == "code" for o in c.outputs if "data" in o]
    assert any(PLOTLY_JSON in b for b in bundles) and not any("image/png" in b for b in bundles)
