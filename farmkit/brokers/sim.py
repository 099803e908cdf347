"""The simulated broker: backtrader's ``BackBroker`` configured exactly as a backtest configures it.

    broker = sim_broker(BrokerConfig(cash=50_000, commission=0.0005, coc=True))
    cerebro.setbroker(broker)       # fills identical to fk.backtest(..., cash=50_000, commission=0.0005, coc=True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import backtrader as bt

if TYPE_CHECKING:       # engine imports the brokers; a runtime import back would be circular
    from farmkit.engine import BrokerConfig

__all__ = ["configure", "sim_broker"]


def configure(broker: bt.brokers.BackBroker, config: "BrokerConfig") -> bt.brokers.BackBroker:
    """Apply cash, commission, slippage and cheat-on-close/open to ``broker``, as ``BrokerConfig.apply`` does.

    The sizer is not a broker setting: it stays with cerebro (``cerebro.addsizer``).
    """
    broker.setcash(config.cash)
    broker.setcommission(commission=config.commission)
    # Percent slippage wins over fixed when both are set, as in BrokerConfig.apply.
    if config.slippage_perc:
        broker.set_slippage_perc(config.slippage_perc, slip_open=config.slip_open)
    elif config.slippage_fixed:
        broker.set_slippage_fixed(config.slippage_fixed, slip_open=config.slip_open)
    broker.set_coc(config.coc)
    broker.set_coo(config.coo)
    return broker


def sim_broker(config: "BrokerConfig") -> bt.brokers.BackBroker:
    """A new ``BackBroker`` configured from ``config``."""
    return configure(bt.brokers.BackBroker(), config)
