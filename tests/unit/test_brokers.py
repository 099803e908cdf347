"""The broker registry, and the sim broker filling exactly as a backtest does."""

import backtrader as bt
import pytest

import farmkit as fk
from farmkit.brokers import REGISTRY, open_broker, sim_broker
from farmkit.brokers import BrokerConfig
from farmkit.errors import ConfigError, MissingCredentials
from farmkit.feeds import HistoryFeed


class SmaCross(bt.Strategy):
    params = (("fast", 5), ("slow", 20))

    def __init__(self):
        self.cross = bt.ind.CrossOver(bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow))
        self.fills = []

    def next(self):
        if self.cross > 0 and not self.position:
            self.buy(size=100)
        elif self.cross < 0 and self.position:
            self.close()

    def notify_order(self, order):
        if order.status == order.Completed:
            self.fills.append((bt.num2date(order.executed.dt), order.executed.size, order.executed.price,
                               order.executed.comm))


@pytest.fixture(scope="module")
def bars():
    return fk.data.synthetic("AAPL", start="2024-01-02", days=3, freq="1min", seed=11)["AAPL"]


def run(bars, config, *, through_registry):
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(HistoryFeed(dataname=bars, name="AAPL", timeframe=bt.TimeFrame.Minutes, compression=1))
    if through_registry:
        cerebro.setbroker(open_broker("sim://", config))
    else:
        config.apply(cerebro)
    cerebro.addstrategy(SmaCross)
    strat = cerebro.run()[0]
    return strat.fills, cerebro.broker.getvalue(), cerebro.broker.getcash()


@pytest.mark.parametrize("config", [
    BrokerConfig(),
    BrokerConfig(cash=50_000, commission=0.001, slippage_perc=0.0005),
    BrokerConfig(commission=0.0005, slippage_fixed=0.02, slip_open=True),
    BrokerConfig(cash=25_000, coc=True),
    BrokerConfig(coo=True, slippage_perc=0.001, slippage_fixed=0.5),   # percent wins, as in apply()
], ids=["defaults", "commission+perc", "fixed+slip_open", "coc", "coo+both"])
def test_sim_broker_fills_exactly_as_the_backtest(bars, config):
    backtest = run(bars, config, through_registry=False)
    sim = run(bars, config, through_registry=True)
    assert len(backtest[0]) >= 10
    assert sim == backtest


def test_sim_broker_is_a_configured_backbroker():
    broker = sim_broker(BrokerConfig(cash=1234.0, commission=0.002, coc=True))
    assert isinstance(broker, bt.brokers.BackBroker)
    assert broker.getcash() == 1234.0 and broker.p.coc is True
    assert broker.getcommissioninfo(type("D", (), {"_name": "X"})()).p.commission == 0.002


def test_registry_lists_its_schemes():
    assert sorted(REGISTRY) == ["alpaca-paper", "sim"]


@pytest.mark.parametrize("url", ["ib://", "sim", "alpaca://", ""])
def test_unknown_broker_names_the_known_schemes(url):
    with pytest.raises(ConfigError, match="known schemes: alpaca-paper://, sim://"):
        open_broker(url, BrokerConfig())


def test_broker_urls_take_no_host():
    with pytest.raises(ConfigError, match="APCA_API_BASE_URL"):
        open_broker("alpaca-paper://paper-api.alpaca.markets", BrokerConfig(), environ={}, run_id="r")


def test_alpaca_paper_needs_a_run_id_and_keys():
    with pytest.raises(ConfigError, match="run_id"):
        open_broker("alpaca-paper://", BrokerConfig(), environ={})
    with pytest.raises(MissingCredentials, match="APCA_API_KEY_ID and APCA_API_SECRET_KEY are not set"):
        open_broker("alpaca-paper://", BrokerConfig(), environ={}, run_id="r")


def test_alpaca_paper_refuses_the_live_trading_endpoint():
    environ = {"APCA_API_KEY_ID": "k", "APCA_API_SECRET_KEY": "s", "APCA_API_BASE_URL": "https://api.alpaca.markets"}
    with pytest.raises(ConfigError, match="live-trading"):
        open_broker("alpaca-paper://", BrokerConfig(), environ=environ, run_id="r")
