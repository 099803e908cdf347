"""The simulated broker: backtrader's ``BackBroker`` configured exactly as a backtest configures it.

    broker = sim_broker(BrokerConfig(cash=50_000, commission=0.0005, coc=True))
    cerebro.setbroker(broker)       # fills identical to fk.backtest(..., cash=50_000, commission=0.0005, coc=True)
"""

from __future__ import annotations

import backtrader as bt

from farmkit.brokers.config import BrokerConfig, configure

__all__ = ["configure", "sim_broker"]


def sim_broker(config: BrokerConfig) -> bt.brokers.BackBroker:
    """A new ``BackBroker`` configured from ``config``."""
    return configure(bt.brokers.BackBroker(), config)
