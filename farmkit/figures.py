"""Static images beside interactive plotly figures, so that a shared notebook still shows its charts.

JupyterLab draws a plotly figure from its ``application/vnd.plotly.v1+json`` output; nbconvert's HTML,
GitHub and nbviewer cannot run plotly.js and show nothing. In an IPython kernel, importing farmkit
adds the renderer ``farmkit_png`` to plotly's default renderers, so every figure a cell displays
(``res.plot()``, ``fig.show()``) also carries an ``image/png``, drawn by kaleido in a headless
Chromium. One Chromium serves the kernel's figures: started on the first one, it exits with the kernel.

``FARM_FIGURE_IMAGES`` says when: ``auto`` (the default: when kaleido finds a Chromium, otherwise one
note and interactive figures only), ``on`` (a figure that cannot be drawn is an error), ``off``.
Sweep trials never draw images: their notebooks are kept, not shared.

>>> import plotly.io as pio
>>> pio.renderers.default            # in a kernel, after ``import farmkit``
'plotly_mimetype+farmkit_png'
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import sys
import threading
from collections.abc import Callable, Mapping

from farmkit.errors import FarmError

__all__ = ["RENDERER", "FigureImageError", "FigureImages", "install"]

RENDERER = "farmkit_png"
# plotly's own static renderers: a default that has one of them already carries an image
_STATIC = {"png", "jpeg", "jpg", "svg", "pdf", "webp"}
_START_TIMEOUT = 60.0     # seconds for Chromium to start and load plotly.js
_RENDER_TIMEOUT = 90.0    # seconds for one image
_SCALE = 1                # device pixels per layout pixel: enough to read a shared chart, small in the .ipynb
_MIN_WIDTH = 1000         # pixels, when the figure sets no width


class FigureImageError(FarmError, RuntimeError):
    """A figure's static image could not be drawn (``FARM_FIGURE_IMAGES=on``)."""


class _Chromium:
    """One kaleido browser on an event loop of its own thread, so a cell (whose kernel runs its own
    loop) can wait for an image with a timeout, and a browser that does not start raises instead of
    leaving the caller waiting."""

    def __init__(self) -> None:
        from kaleido import Kaleido

        self._kaleido = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="farm-figure-images", daemon=True)
        self._thread.start()
        try:
            # MathJax would come from a CDN; the tearsheet has no TeX. plotly.js is plotly.py's own copy.
            self._kaleido = Kaleido(n=1, timeout=_RENDER_TIMEOUT, mathjax=False)
            self._call(self._kaleido.open(), _START_TIMEOUT)
        except BaseException:
            self.close()
            raise

    def _call(self, coroutine, timeout: float):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def png(self, fig_dict: dict, width: int, height: int) -> bytes:
        opts = {"format": "png", "width": width, "height": height, "scale": _SCALE}
        return self._call(self._kaleido.calc_fig(fig_dict, opts=opts), _RENDER_TIMEOUT + 10)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            if self._kaleido is not None:
                self._call(self._kaleido.close(), 15)
        except Exception:  # noqa: BLE001 - already gone (it died, or never started): nothing to stop
            pass
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self._loop.close()


def _find_chromium() -> str | None:
    """The browser kaleido would start (BROWSER_PATH, plotly_get_chrome's download, or on PATH)."""
    try:
        from choreographer.browsers.chromium import Chromium

        return Chromium.find_browser(skip_local=False)
    except (ImportError, AttributeError, TypeError):   # another choreographer: look where it looks first
        import os
        import shutil

        names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
        return os.environ.get("BROWSER_PATH") or next(filter(None, map(shutil.which, names)), None)


def _size(fig_dict: dict) -> tuple[int, int]:
    # as plotly.io.to_image sizes an image: the figure's layout, its template's, else plotly's defaults
    import plotly.io as pio

    layout = fig_dict.get("layout", {})
    template = layout.get("template", {}).get("layout", {})
    # wide enough to read a stacked tearsheet's title and ticks (plotly's default is 700 px)
    return (int(layout.get("width") or template.get("width") or max(pio.defaults.default_width, _MIN_WIDTH)),
            int(layout.get("height") or template.get("height") or pio.defaults.default_height))


class FigureImages:
    """Draws figures as PNG for the kernel's lifetime; what ``FARM_FIGURE_IMAGES`` asks is read at each
    figure, from ``environ`` (default: ``os.environ``), so a sweep's trial setup can turn it off.

    >>> FigureImages().bundle(fig.to_dict())
    {'image/png': 'iVBORw0KGgo...'}
    """

    def __init__(self, environ: Mapping[str, str] | None = None, *,
                 find_chromium: Callable[[], str | None] = _find_chromium, note=None) -> None:
        self._environ = environ
        self._find_chromium = find_chromium
        self._note = note or (lambda line: print(line, file=sys.stderr))
        self._chromium: _Chromium | None = None
        self._unavailable: str | None = None   # why images are off for this kernel (auto: noted once)
        self._lock = threading.Lock()

    def mode(self) -> str:
        from farmkit.settings import Settings

        return Settings.from_env(self._environ).figure_images

    def bundle(self, fig_dict: dict) -> dict:
        """``{"image/png": base64}`` for the figure, or ``{}`` when images are off or cannot be drawn."""
        mode = self.mode()
        if mode == "off":
            return {}
        with self._lock:
            try:
                if self._unavailable is not None:
                    raise FigureImageError(self._unavailable)
                png = self._browser().png(fig_dict, *_size(fig_dict))
            except Exception as exc:  # noqa: BLE001 - whatever kaleido or Chromium raised: said in one line
                return self._failed(mode, exc)
        return {"image/png": base64.b64encode(png).decode("ascii")}

    def _browser(self) -> _Chromium:
        if self._chromium is None:
            try:
                import kaleido  # noqa: F401 - only whether it is installed
            except ImportError:
                raise FigureImageError("kaleido is not installed (pip install kaleido)") from None
            if self._find_chromium() is None:
                raise FigureImageError("kaleido found no Chromium (apt-get install chromium, or set "
                                       "BROWSER_PATH to a Chrome or Chromium)")
            self._chromium = _Chromium()
            atexit.register(self.close)
        return self._chromium

    def _failed(self, mode: str, exc: Exception) -> dict:
        reason = str(exc) if isinstance(exc, FigureImageError) else f"{type(exc).__name__}: {exc}".rstrip(": ")
        reason = " ".join(reason.split())   # one line, whatever the library's message
        first = self._unavailable is None
        self._unavailable = reason
        self.close()
        if mode == "on":
            raise FigureImageError(f"FARM_FIGURE_IMAGES=on but the figure's image could not be drawn: {reason}; "
                                   "fix that or set FARM_FIGURE_IMAGES=off") from None
        if first:
            self._note(f"farmkit: figures are interactive only (not shown in shared notebooks): {reason}; "
                       "FARM_FIGURE_IMAGES=off hides this note")
        return {}

    def close(self) -> None:
        """Stop the kernel's Chromium, if one runs (also at the kernel's exit)."""
        chromium, self._chromium = self._chromium, None
        if chromium is not None:
            chromium.close()


def _renderer_class():
    from plotly.io._base_renderers import MimetypeRenderer

    class StaticImageRenderer(MimetypeRenderer):
        """plotly's renderer interface around :class:`FigureImages` (plotly copies a renderer for
        each figure: the state stays in the one FigureImages they share)."""

        def __init__(self, images: FigureImages):
            self.images = images

        def to_mimebundle(self, fig_dict):
            return self.images.bundle(fig_dict)

    return StaticImageRenderer


def _kernel_shell():
    """The IPython shell of the Jupyter kernel this process is, or None (a script, a terminal IPython)."""
    if "ipykernel" not in sys.modules:
        return None
    from IPython import get_ipython

    shell = get_ipython()
    return shell if shell is not None and type(shell).__module__.startswith("ipykernel.") else None


def install(shell=None, images: FigureImages | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """In a Jupyter kernel, add ``farmkit_png`` to plotly's default renderers (once); True if it is there.
    A default that already draws a static image (``png``, ``svg``...) is left as it is, and with
    ``FARM_FIGURE_IMAGES=off`` when farmkit is imported plotly is not touched (nor imported)."""
    from farmkit.errors import ConfigError
    from farmkit.settings import Settings

    if (shell if shell is not None else _kernel_shell()) is None:
        return False
    try:
        if Settings.from_env(environ).figure_images == "off":
            return False
    except ConfigError:   # said by the first fk.backtest, or at the first figure; not by `import farmkit`
        pass
    import plotly.io as pio

    if RENDERER not in pio.renderers:
        pio.renderers[RENDERER] = _renderer_class()(images or FigureImages())
    names = [n for n in (pio.renderers.default or "").split("+") if n]
    if not any(n in _STATIC or n == RENDERER for n in names):
        pio.renderers.default = "+".join([*names, RENDERER])
    return True
