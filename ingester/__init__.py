"""The unified market-data ingester: Alpaca stocks and crypto streams and news polling, onto the bus.

    python -m ingester --source synthetic --stocks AAPL,MSFT     # or: farm ingest ...

Modules: ``settings`` (FARM_INGEST_*), ``sharding`` (which replica serves what), ``streams`` (one alpaca-py
connection per feed), ``wire`` (Alpaca payloads -> wire records), ``sequencer`` (order and gaps per symbol),
``backfill`` (missing bars from REST), ``news`` (polling with a high-water mark), ``watchdog`` (silent
streams), ``publisher`` (batched, retried publishing), ``sources`` (synthetic and replay), ``service``.

What consumers get on ``market-data``: one bar per symbol and minute, in order per symbol (ordering key =
symbol), ``source`` alpaca_stock / alpaca_crypto, or ``backfill`` for bars fetched from REST after a gap.
Delivery is at least once: dedupe on (symbol, timestamp). An updated bar (Alpaca's late-trade correction)
has the same timestamp and ``revision`` >= 1: a live strategy that already used the bar keeps it
(``farmkit.live.router`` counts it as a duplicate and notes a ``revision`` event); the archive keeps every
revision, and the latest revision of a minute is the final bar.
"""
