"""The broker model a run trades on: cash, commission, slippage, cheat-on-close/open and the sizer.

Every field means what the backtrader call of the same name means, with backtrader's default:

    BrokerConfig(slippage_perc=0.001)      # broker.set_slippage_perc(0.001): slip_open=True, ...
    BrokerConfig(coo=True)                 # bt.Cerebro(cheat_on_open=True), so next_open() runs

A backtest and a paper session of the same notebook get the same ``BrokerConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import backtrader as bt

__all__ = ["BrokerConfig", "configure"]


@dataclass(frozen=True)
class BrokerConfig:
    """Broker settings with backtrader's defaults.

    ``commission`` is ``broker.setcommission(commission=...)``; ``slippage_perc`` and
    ``slippage_fixed`` with ``slip_open``, ``slip_limit``, ``slip_match`` and ``slip_out`` are
    ``broker.set_slippage_perc/fixed(...)`` (percent wins when both are set, as in backtrader);
    ``coc`` is ``broker.set_coc(True)``; ``coo`` is cerebro's ``cheat_on_open`` with the broker's
    ``coo`` on; ``sizer`` and ``sizer_params`` are ``cerebro.addsizer(sizer, **sizer_params)``.
    """

    cash: float = 100_000.0
    commission: float = 0.0
    slippage_perc: float = 0.0
    slippage_fixed: float = 0.0
    slip_open: bool = True
    slip_limit: bool = True
    slip_match: bool = True
    slip_out: bool = False
    coc: bool = False           # cheat-on-close: market orders fill at this bar's close
    coo: bool = False           # cheat-on-open: next_open() runs, its orders fill at this bar's open
    sizer: type | None = None
    sizer_params: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "cash", float(self.cash))
        object.__setattr__(self, "commission", float(self.commission))
        object.__setattr__(self, "sizer_params", dict(self.sizer_params or {}))
        if self.sizer is not None and not (isinstance(self.sizer, type) and issubclass(self.sizer, bt.Sizer)):
            raise TypeError(f"sizer must be a backtrader Sizer class (e.g. bt.sizers.PercentSizer), got {self.sizer!r}")

    def as_kwargs(self) -> dict:
        """The keyword arguments of ``fk.backtest`` that rebuild this broker."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_record(self) -> dict:
        """The broker model as plain JSON (the run registry's ``broker``): the sizer by its import
        path ``module:Class``."""
        record = self.as_kwargs()
        if self.sizer is not None:
            record["sizer"] = f"{self.sizer.__module__}:{self.sizer.__qualname__}"
        record["sizer_params"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in self.sizer_params.items()}
        return record

    @classmethod
    def from_record(cls, record: dict) -> "BrokerConfig":
        """The broker model :meth:`to_record` wrote (fields it does not know are refused)."""
        record = dict(record)
        sizer = record.get("sizer")
        if isinstance(sizer, str):
            import importlib

            module, _, name = sizer.partition(":")
            try:
                found = importlib.import_module(module)
                for part in name.split("."):
                    found = getattr(found, part)
            except (ImportError, AttributeError) as exc:
                raise ValueError(f"the run's sizer {sizer} cannot be imported here ({exc}); make its module "
                                 f"importable, or give the broker model yourself") from None
            record["sizer"] = found
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise ValueError(f"unknown broker field(s) {', '.join(unknown)}")
        return cls(**record)

    def cerebro_kwargs(self) -> dict:
        """What the broker model asks of cerebro itself: cheat-on-open is cerebro's switch."""
        return {"cheat_on_open": True} if self.coo else {}

    def apply(self, cerebro: bt.Cerebro, broker: bt.broker.BrokerBase | None = None) -> None:
        """Configure cerebro's broker (or install ``broker``, e.g. Alpaca paper, which keeps its own
        cash and fees); the sizer always goes on cerebro."""
        if broker is None:
            configure(cerebro.broker, self)
        else:
            cerebro.setbroker(broker)
        if self.sizer is not None:
            cerebro.addsizer(self.sizer, **self.sizer_params)


def configure(broker: bt.brokers.BackBroker, config: BrokerConfig) -> bt.brokers.BackBroker:
    """Apply cash, commission, slippage and cheat-on-close/open to ``broker``, as ``BrokerConfig.apply`` does.

    The sizer is not a broker setting: it stays with cerebro (``cerebro.addsizer``).
    """
    broker.setcash(config.cash)
    broker.setcommission(commission=config.commission)
    slip = dict(slip_open=config.slip_open, slip_limit=config.slip_limit, slip_match=config.slip_match,
                slip_out=config.slip_out)
    # Percent slippage wins over fixed when both are set, as in backtrader's BackBroker.
    if config.slippage_perc:
        broker.set_slippage_perc(config.slippage_perc, **slip)
    elif config.slippage_fixed:
        broker.set_slippage_fixed(config.slippage_fixed, **slip)
    broker.set_coc(config.coc)
    broker.set_coo(config.coo)
    return broker
