"""Brokers chosen by URL (``FARM_BROKER``), through an explicit registry::

    broker = open_broker("sim://", BrokerConfig(cash=100_000))                  # backtrader's BackBroker
    broker = open_broker("alpaca-paper://", config, run_id="paper-aapl-1")      # Alpaca paper account

``sim://`` fills exactly as a backtest does. ``alpaca-paper://`` reads ``APCA_API_KEY_ID`` and
``APCA_API_SECRET_KEY`` (and ``APCA_API_BASE_URL`` to point elsewhere than Alpaca's paper API) from
``environ``; the run is a virtual sub-account of that account with the config's ``cash``, and commission
and slippage are Alpaca's own (see :mod:`farmkit.brokers.subaccounts`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import urlparse

import backtrader as bt

from farmkit.brokers.config import BrokerConfig, configure
from farmkit.brokers.sim import sim_broker
from farmkit.errors import ConfigError
from farmkit.settings import backend

__all__ = ["REGISTRY", "BrokerConfig", "configure", "open_broker", "sim_broker"]


def _sim(url: str, config: BrokerConfig, environ: Mapping[str, str] | None, run_id: str | None):
    return sim_broker(config)


def _alpaca_paper(url: str, config: BrokerConfig, environ: Mapping[str, str] | None, run_id: str | None):
    from farmkit.brokers.alpaca_paper import AlpacaPaperBroker     # on use: alpaca-py is an optional extra

    if run_id is None:
        # The run id makes client_order_ids deterministic; a random one would defeat restart adoption.
        raise ConfigError("the alpaca-paper:// broker needs a run_id (its orders' client_order_ids derive from it)")
    return AlpacaPaperBroker.from_env(run_id, environ=environ, cash=config.cash)


REGISTRY: dict[str, Callable[..., bt.broker.BrokerBase]] = {"sim": _sim, "alpaca-paper": _alpaca_paper}


def open_broker(url: str, config: BrokerConfig, *, environ: Mapping[str, str] | None = None,
                run_id: str | None = None) -> bt.broker.BrokerBase:
    """The broker a URL names: ``sim://`` or ``alpaca-paper://``; ``run_id`` is required for Alpaca."""
    factory = backend(REGISTRY, url, "broker")
    parsed = urlparse(url)
    if parsed.netloc or parsed.path.strip("/"):
        raise ConfigError(f"broker URL {url!r} takes no host or path; write {parsed.scheme}://"
                          + (" and set APCA_API_BASE_URL to point elsewhere" if parsed.scheme == "alpaca-paper" else ""))
    return factory(url, config, environ, run_id)
