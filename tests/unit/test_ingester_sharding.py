from collections import Counter

import pytest

from farmkit.errors import ConfigError
from ingester.sharding import assign, ordinal, owner, units_for

SYMBOLS = [f"S{i:04d}" for i in range(2000)]
UNITS = [("stocks", s) for s in SYMBOLS] + [("crypto", "BTC/USD"), ("news", "*")]


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_every_unit_on_exactly_one_shard(count):
    shards = [assign(UNITS, i, count) for i in range(count)]
    served = Counter(u for shard in shards for u in shard)
    assert set(served) == set(UNITS) and set(served.values()) == {1}


def test_shards_are_balanced():
    sizes = [len(assign(UNITS, i, 4)) for i in range(4)]
    assert min(sizes) > 0.8 * len(UNITS) / 4


@pytest.mark.parametrize("before", [1, 2, 3, 5])
def test_adding_a_replica_moves_only_units_to_it(before):
    old = {u: owner(u, before) for u in UNITS}
    new = {u: owner(u, before + 1) for u in UNITS}
    moved = [u for u in UNITS if old[u] != new[u]]
    assert all(new[u] == before for u in moved)             # nothing moves between old replicas
    assert len(moved) < 1.3 * len(UNITS) / (before + 1)     # about 1/(N+1) move


def test_removing_a_replica_moves_only_its_units():
    old = {u: owner(u, 4) for u in UNITS}
    new = {u: owner(u, 3) for u in UNITS}
    assert all(old[u] == 3 for u in UNITS if old[u] != new[u])


def test_units_by_feed_and_wildcards():
    feeds = {"stocks": ("AAPL", "MSFT"), "crypto": ("*",), "news": ()}
    assert units_for(feeds, "feed") == [("stocks", "*"), ("crypto", "*")]
    assert units_for(feeds, "symbol") == [("stocks", "AAPL"), ("stocks", "MSFT"), ("crypto", "*")]
    with pytest.raises(ConfigError):
        units_for(feeds, "region")


def test_ordinal_and_bad_index():
    assert ordinal("ingester-12") == 12 and ordinal("laptop") is None and ordinal(None) is None
    with pytest.raises(ConfigError, match="FARM_INGEST_SHARD_INDEX"):
        assign(UNITS, 3, 3)
