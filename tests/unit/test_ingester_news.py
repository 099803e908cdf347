import pandas as pd

from farmkit.model import NewsItem
from ingester.news import NewsCursor, NewsPoller, RestBudget

T0 = pd.Timestamp("2024-01-02 14:00", tz="UTC")


def item(id_, minutes, created=0):
    return NewsItem(id_, f"h{id_}", "", ("AAPL",), T0 + pd.Timedelta(minutes=created), T0 + pd.Timedelta(minutes=minutes),
                    "", "alpaca_news")


def test_new_articles_once_and_updates_again():
    cursor = NewsCursor(T0)
    assert [i.id for i in cursor.accept([item(2, 2), item(1, 1)])] == [1, 2]      # oldest first
    assert cursor.mark == T0 + pd.Timedelta(minutes=2)
    assert cursor.accept([item(1, 1), item(2, 2)]) == []                             # the overlap repeats
    updated = cursor.accept([item(1, 3)])                                            # a new version of 1
    assert [(i.id, i.updated_at) for i in updated] == [(1, T0 + pd.Timedelta(minutes=3))]
    assert cursor.since() == T0 + pd.Timedelta(minutes=2)


def test_old_articles_below_the_window_are_ignored():
    cursor = NewsCursor(T0 + pd.Timedelta(minutes=10))
    assert cursor.accept([item(1, 1)]) == []


def test_poller_publishes_new_items_and_counts_malformed():
    raw = [{"id": 1, "headline": "a", "created_at": "2024-01-02T14:01:00Z", "updated_at": "2024-01-02T14:01:00Z"},
           {"id": 2, "headline": "no time"}]
    published, bad, since = [], [], []
    poller = NewsPoller(lambda s: since.append(s) or raw, published.append, NewsCursor(T0), 1.0, RestBudget(100),
                        on_malformed=bad.append)
    assert poller.poll_once() == 1 and poller.poll_once() == 0
    assert [p.id for p in published] == [1] and len(bad) == 2 and since[0] == T0 - pd.Timedelta(minutes=1)


def test_rest_budget_limits_requests_per_minute():
    now = [0.0]
    budget = RestBudget(60, clock=lambda: now[0])
    assert all(budget.try_take() == 0.0 for _ in range(60))
    assert budget.try_take() == 1.0          # one token a second
    now[0] += 2.0
    assert budget.try_take() == 0.0 and budget.try_take() == 0.0 and budget.try_take() > 0
