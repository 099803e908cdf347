"""A paper run on the alpaca-paper:// broker in a process of its own, so that a test can SIGKILL it:

    python -m tests.integration.resting_orders_run STATE_DIR [FIRST LAST]    # live bars FIRST..LAST-1

The Alpaca keys and ``APCA_API_BASE_URL`` come from the environment (the local Alpaca server's).
The run sees the first ``FIRST_RUN_BARS`` live bars: FMEL commits every ``BATCH`` bars, so bars up to
live bar 19 are checkpointed and live bars 20-22 are only in the inbox when it is killed.
"""

from __future__ import annotations

import sys

import backtrader as bt

import farmkit as fk

DATA = fk.data.synthetic("AAPL", start="2024-03-04", days=1, seed=3)["AAPL"]
HISTORY, LIVE = DATA.iloc[:30], DATA.iloc[30:70]
CASH = 1_000_000.0
BATCH = 10
FIRST_RUN_BARS = 23
RESTING = list(range(1, 15)) + [21]     # live bars that rest a limit buy below the market
CLOSE_AT = 30


class RestingBuys(fk.Strategy):
    """500 at market on the first live bar, a resting limit buy of 100 at 90 on live bars 1-14 and 21,
    and on live bar 30 a close of whatever the broker says it holds."""

    def next(self):
        now = bt.num2date(self.data.datetime[0])
        i = int((now - LIVE.index[0].tz_localize(None)).total_seconds() // 60)
        self.track(position=self.position.size)
        if i == 0:
            self.buy(size=500, reason="open the position")
        elif i in RESTING:
            self.buy(size=100, exectype=bt.Order.Limit, price=90.0, reason="rest a bid below the market")
        elif i == CLOSE_AT and self.position:
            self.close(reason="close what the account holds")


def run(state_dir, live, **options):
    from farmkit.bus import open_bus
    from farmkit.live.session import paper
    from tests.integration.test_paper import bars_of
    from tests.integration.test_runner import publish_on_start

    bus = open_bus("memory://")
    try:
        return paper(RestingBuys, ["AAPL"], bus=bus, history=fk.Bars(AAPL=HISTORY), broker_url="alpaca-paper://",
                     cash=CASH, state_dir=state_dir, batch_bars=BATCH, flush_seconds=1e9,
                     on_start=publish_on_start(bus, bars_of(live, "AAPL")), **options)
    finally:
        bus.close()


def main(state_dir: str, first: int = 0, last: int = FIRST_RUN_BARS) -> None:
    # Runs until killed; the duration only keeps a forgotten process from living on.
    run(state_dir, LIVE.iloc[first:last], duration=60)


if __name__ == "__main__":
    from tests.integration.resting_orders_run import main as _main   # the strategy under its module name

    _main(sys.argv[1], *map(int, sys.argv[2:4]))
