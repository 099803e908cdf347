"""Virtual sub-accounts on one Alpaca account: who owns an order, what each agent holds, and which orders
are refused. Pure functions on plain rows: no backtrader, no network."""

from datetime import datetime, timezone

import pytest

from farmkit.brokers.subaccounts import OrderRow, attribute, order_number, owner_of, refusal

T0 = datetime(2024, 3, 4, 14, 30, tzinfo=timezone.utc)


def row(cid, symbol="AAPL", side="buy", qty=10.0, filled=10.0, price=100.0, status="filled", n=0):
    return OrderRow(id=f"id-{cid}-{n}", client_order_id=cid, symbol=symbol, side=side, qty=qty, filled_qty=filled,
                    filled_avg_price=price if filled else None, status=status, submitted_at=T0)


def test_an_agents_order_is_its_run_id_and_a_number_anything_else_is_nobodys():
    assert owner_of("paper-20240304-143000-ab12cd-7") == "paper-20240304-143000-ab12cd"
    assert owner_of("alpha-1") == "alpha" and owner_of("a-b-c-12") == "a-b-c"
    # Alpaca's own ids (orders placed in the dashboard or without a client_order_id) are UUIDs.
    assert owner_of("0d4f6f4e-9b1f-4c4e-8c39-123456789012") is None
    assert owner_of("manual") is None and owner_of("-3") is None and owner_of("x-") is None and owner_of("") is None


def test_order_numbers_belong_to_the_run_in_either_form_of_its_prefix():
    assert order_number("sess-42-7", "sess-42") == 7
    assert order_number("sess-421-7", "sess-42") is None and order_number("other-7", "sess-42") is None
    long_run = "paper-" + "x" * 60
    from farmkit.brokers.alpaca_paper import client_order_id
    assert order_number(client_order_id(long_run, 12), long_run) == 12


def test_positions_are_attributed_per_symbol_to_each_agent_and_to_nobody():
    rows = [row("alpha-1", qty=30, filled=30), row("beta-1", side="sell", qty=50, filled=20, status="partially_filled"),
            row("alpha-2", symbol="MSFT", qty=5, filled=0, status="new"),
            row("0d4f6f4e-9b1f-4c4e-8c39-123456789012", qty=7, filled=7)]
    held = attribute(rows)
    assert held == {"AAPL": {"alpha": 30.0, "beta": -20.0, None: 7.0}, "MSFT": {"alpha": 0.0}}


@pytest.mark.parametrize("size, account, own, others, refused", [
    (10, 35.0, 30.0, 5.0, None),                 # the account is the sum of its agents: trade
    (10, 42.0, 30.0, 5.0, "belong to no agent"),  # 7 held by nobody's orders
    (-30, -20.0, 30.0, -50.0, "short sale"),     # closing a long would take the account net short
    (-30, 30.0, 30.0, 0.0, None),                # closing a long the account really holds
    (-60, 30.0, 0.0, 30.0, None),                # the agent itself goes short: its own decision
    (50, -20.0, -50.0, 30.0, None),              # buying never opens a short
])
def test_the_refusal_rules(size, account, own, others, refused):
    reason = refusal("AAPL", size, account=account, own=own, others=others)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason and "AAPL" in reason


def test_a_refusal_names_the_numbers():
    reason = refusal("AAPL", 10, account=2000.0, own=500.0, others=0.0)
    assert "2000" in reason and "500" in reason and "1500" in reason
    assert refusal("BTC/USD", 0.1, account=0.30000000000000004, own=0.1, others=0.2) is None   # float noise
