"""The market-data ingester service (Alpaca streams and news into the bus)."""
