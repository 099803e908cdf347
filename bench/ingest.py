"""Ingester throughput on a minute-boundary burst: the local Alpaca stream server sends N bars (one per
symbol, the full US market is ~10,000) -> real alpaca-py -> ingester -> Pub/Sub emulator; and, in the same
run, the raw google-cloud-pubsub publisher publishes the same N wire messages.

Clock: ``time.perf_counter()`` in this process (server, ingester and raw publisher all run here; the
emulator is a Java process). ``ingest_s``: from just before the server writes the first frame to the
moment the ingester's last publish request is acknowledged by the emulator. ``raw_s``: from the first
``publish()`` call of the raw client (default batching, no ordering keys: its fastest mode) to its last
future done; ``raw_ordered_s``: the same with ordering key = symbol, which the wire format asks for (the
client library then sends one request per key). ``lost``: N minus the distinct symbols pulled back from a
subscription on the ingester's topic (so 0 means every bar reached Pub/Sub).

    python bench/ingest.py            # 10,000 bars
    python bench/ingest.py --quick    # 1,000 bars (CI)

Prints name=value lines; the headline, last, is ``ratio_ingest_to_raw`` = ingest_s / raw_s (target <= 1.5;
target for ingest_s <= 1.5 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from concurrent.futures import wait
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROJECT = "farm-bench"


def _bars(n: int):
    import msgpack
    import pandas as pd

    t = pd.Timestamp("2024-01-02 14:31", tz="UTC")
    stamp = msgpack.Timestamp.from_unix_nano(t.value)
    return [{"T": "b", "S": f"S{i:05d}", "o": 10.0, "h": 10.5, "l": 9.5, "c": 10.25, "v": 1000 + i, "n": 10,
             "vw": 10.1, "t": stamp} for i in range(n)]


def _pull_all(subscriber, path: str, expect: int, timeout: float = 60.0) -> set[str]:
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < expect and time.monotonic() < deadline:
        reply = subscriber.pull(request={"subscription": path, "max_messages": 1000}, timeout=10)
        if not reply.received_messages:
            continue
        seen.update(m.message.attributes["symbol"] for m in reply.received_messages)
        subscriber.acknowledge(request={"subscription": path, "ack_ids": [m.ack_id for m in reply.received_messages]})
    return seen


def run_ingester(n: int, emulator_host: str, home: Path) -> dict:
    from google.cloud import pubsub_v1

    from ingester.service import Ingester
    from ingester.settings import IngestSettings
    from tests.alpaca_stream import AlpacaStreamServer

    bus_url = f"pubsub://{PROJECT}"
    results: dict = {}
    with AlpacaStreamServer(connection_limit=None) as server:
        settings = IngestSettings.from_env({
            "FARM_HOME": str(home), "FARM_BUS": bus_url, "FARM_INGEST_STOCKS": "*",
            "FARM_INGEST_STREAM_URL": server.url, "FARM_INGEST_MARKET_TOPIC": "bench-ingest",
            "APCA_API_KEY_ID": server.key_id, "APCA_API_SECRET_KEY": server.secret_key,
            "FARM_INGEST_BACKFILL": "off", "FARM_INGEST_WATCHDOG_SECONDS": "600"})
        ingester = Ingester(settings, clock=lambda: True, health_port=0)
        subscriber = pubsub_v1.SubscriberClient()
        sub_path = subscriber.subscription_path(PROJECT, "bench-ingest-check")
        subscriber.create_subscription(request={"name": sub_path, "topic": f"projects/{PROJECT}/topics/bench-ingest"})
        stop = threading.Event()
        code: list[int] = []
        thread = threading.Thread(target=lambda: code.append(ingester.run(stop)), daemon=True)
        thread.start()
        server.wait_subscribed(["*"], timeout=30)
        messages = _bars(n)
        t0 = time.perf_counter()
        server.send(messages, batch=1000, timeout=60)
        sent_at = time.perf_counter()
        while ingester.publisher.sent < n and time.perf_counter() - t0 < 120:
            time.sleep(0.0005)
        t1 = time.perf_counter()
        stop.set()
        thread.join(60)
        seen = _pull_all(subscriber, sub_path, n)
        subscriber.close()
        latency = ingester.metrics.render()
        results.update(ingest_s=t1 - t0, server_send_s=sent_at - t0, ingest_published=ingester.publisher.sent,
                       lost=n - len(seen), ingest_exit=code[0] if code else -1,
                       malformed=int(ingester.metrics.value("farm_ingest_malformed_total")))
        for line in latency.splitlines():
            if line.startswith("farm_ingest_publish_latency_seconds_sum"):
                results["publish_latency_mean_ms"] = 1000 * float(line.split()[-1]) / max(1, n)
    return results


def run_raw(n: int, ordered: bool) -> float:
    from google.cloud import pubsub_v1

    from ingester.wire import stream_bar

    publisher = pubsub_v1.PublisherClient(publisher_options=pubsub_v1.types.PublisherOptions(
        enable_message_ordering=ordered))
    topic = publisher.topic_path(PROJECT, f"bench-raw-{'ordered' if ordered else 'plain'}")
    publisher.create_topic(name=topic)
    bars = [stream_bar(m, "alpaca_stock") for m in _bars(n)]
    wires = [(b.to_wire(), b.symbol) for b in bars]
    t0 = time.perf_counter()
    futures = [publisher.publish(topic, data, ordering_key=symbol if ordered else "", type="bar", symbol=symbol)
               for data, symbol in wires]
    wait(futures)
    elapsed = time.perf_counter() - t0
    failed = sum(1 for f in futures if f.exception() is not None)
    publisher.stop()
    if failed:
        raise RuntimeError(f"the raw publisher lost {failed} message(s)")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 bars instead of 10,000")
    parser.add_argument("--bars", type=int, help="bars in the burst")
    args = parser.parse_args()
    n = args.bars or (1000 if args.quick else 10_000)
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    from tests.pubsub_emulator import PubSubEmulator, find_emulator_jar

    jar, reason = find_emulator_jar()
    print(f"bars={n}")
    if jar is None:
        print(f"emulator=unavailable  # {reason}")
        sys.exit(1)
    import tempfile

    with PubSubEmulator(jar) as emulator, tempfile.TemporaryDirectory() as home:
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
        ingest = run_ingester(n, emulator.host, Path(home))
        raw = run_raw(n, ordered=False)
        raw_ordered = run_raw(n, ordered=True)
    figures = {**ingest, "ingest_msgs_per_s": n / ingest["ingest_s"], "raw_s": raw, "raw_msgs_per_s": n / raw,
               "raw_ordered_s": raw_ordered, "raw_ordered_msgs_per_s": n / raw_ordered,
               "ratio_ingest_to_raw_ordered": ingest["ingest_s"] / raw_ordered,
               "ratio_ingest_to_raw": ingest["ingest_s"] / raw}
    for name, value in figures.items():
        print(f"{name}={value:.3f}" if isinstance(value, float) else f"{name}={value}")


if __name__ == "__main__":
    main()
