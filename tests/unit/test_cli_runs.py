"""`farm runs`: each listed run beside its own metrics, however many runs there are."""

import pandas as pd

from farmkit.cli import main
from farmkit.fmel.stores import open_store


def test_farm_runs_puts_each_runs_own_metrics_beside_it(farm_home, capsys):
    store = open_store(farm_home.store)
    for i in range(15):   # more runs than are listed
        store.runs.upsert(f"bt-{i:02d}", agent_id="a", strategy="S", mode="backtest", status="done",
                          started_at=pd.Timestamp("2024-01-02", tz="UTC") + pd.Timedelta(minutes=i),
                          metrics={"sharpe": i + 0.25, "total_return": i / 100, "max_drawdown": -i / 1000,
                                   "trades": i})
    assert main(["runs", "-n", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == ["bt-11", "bt-12", "bt-13", "bt-14"]
    header = lines[0].split()
    for row in rows:
        i = int(row[0][3:])
        values = dict(zip(header, row[:2] + [row[2]] + [" ".join(row[3:5])] + row[5:]))
        assert values["sharpe"] == f"{i + 0.25:.2f}" and values["trades"] == str(i), (row, values)
        assert values["total_return"] == f"{i / 100:+.2%}"
