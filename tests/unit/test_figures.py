"""farmkit.figures without a browser: what each FARM_FIGURE_IMAGES value does when no Chromium is found,
and where the renderer is (and is not) installed. Drawing real images: tests/integration/test_shared_images.py."""

import subprocess
import sys

import pytest

from farmkit.errors import ConfigError
from farmkit.figures import RENDERER, FigureImageError, FigureImages, install
from farmkit.settings import Settings

FIGURE = {"data": [{"type": "scatter", "y": [1, 3, 2]}], "layout": {}}


def _images(mode: str, notes: list) -> FigureImages:
    return FigureImages({"FARM_FIGURE_IMAGES": mode}, find_chromium=lambda: None, note=notes.append)


def test_the_setting_defaults_to_auto_and_rejects_other_values():
    assert Settings.from_env({}).figure_images == "auto"
    assert Settings.from_env({"FARM_FIGURE_IMAGES": "off"}).figure_images == "off"
    with pytest.raises(ConfigError, match="FARM_FIGURE_IMAGES must be auto, on or off, got 'yes'"):
        Settings.from_env({"FARM_FIGURE_IMAGES": "yes"})


def test_auto_without_chromium_says_so_once_and_keeps_figures_interactive():
    notes = []
    images = _images("auto", notes)
    assert images.bundle(FIGURE) == {} and images.bundle(FIGURE) == {}
    assert len(notes) == 1 and "\n" not in notes[0]
    assert "no Chromium" in notes[0] and "apt-get install chromium" in notes[0]
    assert "FARM_FIGURE_IMAGES=off" in notes[0]


def test_on_without_chromium_is_an_error_that_says_what_to_do():
    notes = []
    with pytest.raises(FigureImageError, match="FARM_FIGURE_IMAGES=on .*no Chromium.*FARM_FIGURE_IMAGES=off"):
        _images("on", notes).bundle(FIGURE)
    assert notes == []


def test_off_looks_for_nothing():
    def find():
        raise AssertionError("off must not look for a browser")

    assert FigureImages({"FARM_FIGURE_IMAGES": "off"}, find_chromium=find).bundle(FIGURE) == {}


def test_outside_a_kernel_plotly_is_left_alone():
    code = ("import sys, farmkit\nimport plotly.io as pio\n"
            "print('farmkit_png' in pio.renderers.default, 'farmkit_png' in pio.renderers)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "FARM_FIGURE_IMAGES": "on"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
    assert install() is False


def test_in_a_kernel_the_png_renderer_joins_plotlys_default(monkeypatch):
    import plotly.io as pio

    monkeypatch.setattr(pio.renderers, "default", "plotly_mimetype")
    assert install(shell=object(), environ={"FARM_FIGURE_IMAGES": "off"}) is False
    assert pio.renderers.default == "plotly_mimetype"
    assert install(shell=object(), environ={})
    assert pio.renderers.default == f"plotly_mimetype+{RENDERER}"
    install(shell=object(), environ={})   # once
    assert pio.renderers.default == f"plotly_mimetype+{RENDERER}"
    monkeypatch.setattr(pio.renderers, "default", "plotly_mimetype+svg")   # an image already: left as it is
    install(shell=object(), environ={})
    assert pio.renderers.default == "plotly_mimetype+svg"
