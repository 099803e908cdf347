"""Live latency, idle CPU and throughput of fk.paper: publish -> Strategy.next() on the memory bus and
through the Pub/Sub emulator, with the raw google-cloud-pubsub subscriber measured in the same run.

Clock: ``time.perf_counter_ns()`` (CLOCK_MONOTONIC on Linux: one clock for every process of the machine).
The publisher reads it just before each ``publish`` call and carries it, in microseconds, in the bar
itself (its ``volume``) and in a ``pub_us`` attribute. A strategy defined here (an ``fk.Strategy``) reads
the clock on entry to ``next()``/``prenext()`` and takes the publish time from the volume of each feed
that advanced. The bus client's callback is stamped from outside farmkit: the memory bus's ``subscribe``
and the ``SubscriberClient`` inside farmkit's PubSubBus are wrapped so the callback reads the clock on
entry, before farmkit's router sees the message. The bars of one timestamp are published as one burst,
all symbols (as an ingester does when a minute closes). Latencies are in ms.

Scenarios (each in fresh processes; latency scenarios run ``--rounds`` times and the medians of the
per-round percentiles are printed; the first ``--warmup`` seconds of a latency run are not counted):
  memory_{1,10}sym   fk.paper on ``memory://``, publisher thread in the same process, ``--rate`` bars/s in
                     all. ``p50/p90/p99/max``: publish -> next(). ``from_last_publish``: per next() call,
                     from the publish of the last bar of its burst. ``added_per_message``: next() minus the
                     bus callback of the same message (it includes waiting for the other symbols of the
                     timestamp: backtrader calls next() once every feed has its bar). ``added_processing``:
                     per next() call, next() minus the callback of the last of its bars, i.e. farmkit's own
                     work (router, feed queue, cerebro loop) once the bus has delivered everything.
  emulator           one topic, two ordered subscriptions (fk.paper creates ordered ones; the emulator
                     delivers only ~120 msg/s per ordering key, so ``--emulator-symbols`` keys share the
                     rate): ``raw``: a bare ``SubscriberClient`` in its own process, callback = clock +
                     ack; ``client``: the same client's callback inside the fk.paper process; ``paper``:
                     publish -> next() in that process; ``added_per_message``/``added_processing`` as
                     above against ``client`` (paired exactly, same process). The publisher is farmkit's
                     PubSubBus with its default batching, in the parent process; its batching delay is in
                     every figure alike. ``processing_{in_callback,to_strategy_thread,to_next}`` split
                     ``added_processing`` at the last bar's stamps (LiveFeed.put and _load are wrapped in
                     that process): callback -> queued on its feed; -> returned by _load() on the strategy
                     thread; -> next(). ``paper_switch_interval_ms``: the GIL switch interval.
                     Run twice, each time on an emulator of its own. ``emulator_*``: the fk.paper process
                     on a core of its own (the last CPU; the emulator, the publisher and the raw
                     subscriber share the others), as in a runner pod, where Pub/Sub is not on its cores.
                     ``emulator_shared_cores_*``: every process on every core. On a 2-core machine that
                     puts the JVM's, the publisher's and the raw subscriber's bursts on the same cores at
                     the very moments measured: the strategy thread, woken with its bars queued, waits in
                     the kernel's run queue (/proc/thread-self/schedstat shows it) for milliseconds behind
                     other processes. ``added_p99_of_difference`` = p99(paper) - p99(raw) of the shared
                     run, where both subscribers run alike (in the other the raw one shares its cores with
                     the emulator).
  idle_cpu_*         a waiting paper session (1 symbol, no bars) on ``memory://`` or the emulator:
                     process CPU time (all threads, user + system) / wall time = fraction of one core.
  throughput         ``--tp-symbols`` symbols x ``--tp-rate`` timestamps/s for ``--tp-seconds`` on
                     ``memory://``. ``published``; ``processed``: distinct bars that reached next();
                     ``duplicates``: counted by the router plus bars seen twice by next();
                     ``lost`` = published - processed (every bar is published once);
                     ``processed_bars_per_s`` = processed / (last next() - first publish);
                     ``lag_end_ms`` = last next() - last publish; latency over the run and over its last
                     tenth (a last tenth far above the whole run means it was falling behind);
                     ``publisher_ticks_behind``: bursts the publisher itself sent over a period late.

    python bench/live.py            # 3 rounds x 10 s per latency scenario; throughput 100 symbols x 60 s
    python bench/live.py --quick    # CI size: 1 round x 2 s; throughput 20 symbols x 10 s

Prints name=value lines; the headline, last, is ``added_latency_p99_ms`` = the emulator's
``added_processing`` p99 with fk.paper on its own core (on every core when the machine has one CPU):
what fk.paper adds between the Pub/Sub client's callback and next(). When java or the emulator jar is
missing, the emulator part prints ``emulator=unavailable`` and the headline is ``memory_1sym_p99_ms``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "farm-bench"
BASE = "2024-01-02 14:30"


def _now_us() -> int:
    return time.perf_counter_ns() // 1000


# -- what runs inside cerebro --------------------------------------------------------------------

class Collector:
    """Samples (symbol, publish µs, next() µs) of every bar that reached the strategy; ``done`` is set
    once ``expected`` bars have arrived."""

    def __init__(self, expected: int | None = None):
        self.samples: list[tuple[str, int, int]] = []
        self.expected = expected
        self.done = threading.Event()
        self.switch_interval = None

    def add(self, symbol: str, published_us: int, now_us: int) -> None:
        self.samples.append((symbol, published_us, now_us))
        if self.expected is not None and len(self.samples) >= self.expected:
            self.done.set()


COLLECTOR = Collector()


def _stamp_strategy():
    import farmkit as fk

    class StampNext(fk.Strategy):
        """Reads the clock on entry, then notes each feed that advanced (its volume is the publish time)."""

        def start(self):
            self._lens = [0] * len(self.datas)
            COLLECTOR.switch_interval = sys.getswitchinterval()   # as fk.paper set it for the run

        def prenext(self):
            self._stamp()

        def next(self):
            self._stamp()

        def _stamp(self):
            now = time.perf_counter_ns() // 1000
            lens = self._lens
            for i, data in enumerate(self.datas):
                n = len(data)
                if n > lens[i]:
                    lens[i] = n
                    COLLECTOR.add(data._name, int(data.volume[0]), now)

    return StampNext


# -- publishing ----------------------------------------------------------------------------------

def _symbols(n: int) -> list[str]:
    return [f"S{i:03d}" for i in range(n)]


def _templates(symbols, minute: int) -> list[tuple[str, bytes, bytes]]:
    """Wire bytes of each symbol's bar for one minute, with a volume placeholder swapped for the publish
    time at the last moment (so the clock is read right before ``publish``)."""
    import pandas as pd

    from farmkit.model import Bar

    ts = pd.Timestamp(BASE, tz="UTC") + pd.Timedelta(minutes=minute)
    out = []
    for symbol in symbols:
        wire = Bar(symbol, ts, 100.0, 101.0, 99.0, 100.5, 0).to_wire()
        assert b'"volume": 0,' in wire
        out.append((symbol, wire, b'"volume": 0,'))
    return out


def publish_paced(bus, topic: str, symbols, ticks_per_s: float, ticks: int,
                  stop: threading.Event | None = None) -> dict:
    """Publish ``ticks`` minutes of bars for every symbol, one burst per tick, ``ticks_per_s`` bursts a second."""
    period = 1.0 / ticks_per_s
    published = 0
    first_us = last_us = None
    behind = 0
    start = time.perf_counter()
    for k in range(ticks):
        batch = _templates(symbols, k)
        delay = start + k * period - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        elif delay < -period:
            behind += 1
        for symbol, wire, slot in batch:
            t = _now_us()
            bus.publish(topic, wire.replace(slot, b'"volume": %d,' % t), ordering_key=symbol,
                        type="bar", symbol=symbol, pub_us=str(t))
            published += 1
            first_us = first_us or t
            last_us = t
        if stop is not None and stop.is_set():
            break
    bus.flush()
    return {"published": published, "first_pub_us": first_us, "last_pub_us": last_us,
            "publish_wall_s": time.perf_counter() - start, "ticks_behind": behind}


# -- children ------------------------------------------------------------------------------------

def _settings(home: str):
    import farmkit as fk
    # No leaderboard: its embedded Redis takes seconds to stop and is not on the bar path.
    return fk.Settings.from_env({"FARM_HOME": home, "FARM_PROGRESS": "off", "FARM_REDIS": "off"})


def _stop_on_stdin(event: threading.Event) -> None:
    # os.read, not sys.stdin: a thread blocked inside sys.stdin holds its lock and the interpreter
    # would hang at exit until the parent writes something.
    def read():
        data = b""
        while b"stop" not in data:
            chunk = os.read(0, 64)
            if not chunk:
                break
            data += chunk
        event.set()
    threading.Thread(target=read, daemon=True).start()


def child_memory(args) -> dict:
    """fk.paper on memory:// with a paced publisher thread in the same process."""
    from farmkit.bus import open_bus
    from farmkit.live.session import paper

    symbols = _symbols(args.symbols)
    ticks = max(1, round(args.seconds * args.ticks_per_s))
    COLLECTOR.expected = ticks * len(symbols)
    bus = open_bus("memory://")
    callbacks: list = []
    subscribe = bus.subscribe

    def stamped_subscribe(subscription, callback, **options):
        # The bus's callback reads the clock on entry, before farmkit's router sees the message.
        def stamped(message):
            now = _now_us()
            callbacks.append((message.attributes["symbol"], int(message.attributes["pub_us"]), now))
            callback(message)
        return subscribe(subscription, stamped, **options)

    bus.subscribe = stamped_subscribe
    report: dict = {}

    def on_start(session):
        def go():
            report.update(publish_paced(bus, "market-data", symbols, args.ticks_per_s, ticks, session.stopping))
            COLLECTOR.done.wait(args.drain)
            report["drained"] = COLLECTOR.done.is_set()
            session.stop()
        threading.Thread(target=go, daemon=True).start()

    with tempfile.TemporaryDirectory() as home:
        res = paper(_stamp_strategy(), symbols, bus=bus, settings=_settings(home), qcheck=args.qcheck,
                    duration=args.seconds + args.drain + 30, on_start=on_start)
        bus.close()
    report["counts"] = dict(res.metrics["messages"])
    report["samples"], report["callbacks"] = COLLECTOR.samples, callbacks
    return report


class _StampingSubscriber:
    """Wraps the google-cloud-pubsub ``SubscriberClient`` inside farmkit's PubSubBus: the client's own
    callback reads the clock on entry (before farmkit sees the message), so next() minus this stamp is
    what farmkit adds, paired message by message in one process."""

    def __init__(self, inner, samples: list):
        self._inner, self._samples = inner, samples

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def subscribe(self, path, callback, **options):
        samples = self._samples

        def stamped(message):
            now = _now_us()
            samples.append((message.attributes["symbol"], int(message.attributes["pub_us"]), now))
            callback(message)
        return self._inner.subscribe(path, callback=stamped, **options)


def _stamp_feeds() -> dict:
    """Stamps where a bar crosses from the bus client's thread to the strategy thread: ``queued`` when
    the router hands it to its LiveFeed (after parsing and dedupe), ``loaded`` when the feed's
    ``_load()`` returns it on the strategy thread. Rows are (symbol, publish µs, clock µs)."""
    from farmkit.feeds import LiveFeed

    stamps: dict = {"queued": [], "loaded": []}
    put, load = LiveFeed.put, LiveFeed._load

    def stamped_put(self, bar, *ack):
        stamps["queued"].append((bar.symbol, int(bar.volume), _now_us()))
        put(self, bar, *ack)

    def stamped_load(self):
        loaded = load(self)
        if loaded:
            stamps["loaded"].append((self._name, int(self.lines.volume[0]), _now_us()))
        return loaded

    LiveFeed.put, LiveFeed._load = stamped_put, stamped_load
    return stamps


def child_paper_pubsub(args) -> dict:
    """fk.paper on pubsub:// (the emulator); says ``ready`` once subscribed, ends after ``expected`` bars."""
    from farmkit.bus import open_bus
    from farmkit.live.session import paper

    stamps = _stamp_feeds()
    COLLECTOR.expected = args.expected
    stop = threading.Event()
    _stop_on_stdin(stop)
    callbacks: list = []
    bus = open_bus(f"pubsub://{PROJECT}")
    if not hasattr(bus, "_subscriber"):
        raise SystemExit("farmkit's PubSubBus no longer keeps its SubscriberClient in ._subscriber; "
                         "bench/live.py wraps it to stamp the client's callback")
    bus._subscriber = _StampingSubscriber(bus._subscriber, callbacks)

    def on_start(session):
        print("ready", flush=True)

        def watch():
            while not (COLLECTOR.done.is_set() or stop.is_set()):
                time.sleep(0.05)
            session.stop()
        threading.Thread(target=watch, daemon=True).start()

    try:
        with tempfile.TemporaryDirectory() as home:
            res = paper(_stamp_strategy(), _symbols(args.symbols), bus=bus, topic=args.topic,
                        subscription=args.subscription, settings=_settings(home), qcheck=args.qcheck,
                        duration=args.deadline, on_start=on_start)
    finally:
        bus.close()
    return {"counts": dict(res.metrics["messages"]), "samples": COLLECTOR.samples, "callbacks": callbacks,
            "switch_interval": COLLECTOR.switch_interval, **stamps}


def child_raw_pubsub(args) -> dict:
    """The raw google-cloud-pubsub subscriber on an ordered subscription: clock on entry, ack."""
    from google.api_core import exceptions
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(PROJECT, args.topic)
    path = subscriber.subscription_path(PROJECT, args.subscription)
    try:
        publisher.create_topic(name=topic)
    except exceptions.AlreadyExists:
        pass
    subscriber.create_subscription(request={"name": path, "topic": topic, "ack_deadline_seconds": 10,
                                            "enable_message_ordering": True})
    samples: list = []
    done = threading.Event()
    _stop_on_stdin(done)

    def callback(message):
        now = _now_us()
        message.ack()
        samples.append((message.attributes["symbol"], int(message.attributes["pub_us"]), now))
        if len(samples) >= args.expected:
            done.set()

    future = subscriber.subscribe(path, callback=callback,
                                  flow_control=pubsub_v1.types.FlowControl(max_messages=1000))
    print("ready", flush=True)
    done.wait(args.deadline)
    future.cancel()
    try:
        future.result(10)
    except Exception:
        pass
    subscriber.close()
    return {"samples": samples}


def child_idle(args) -> dict:
    """A paper session with no bars: CPU time of the whole process over ``seconds`` of wall time."""
    from farmkit.live.session import paper

    out: dict = {}

    def on_start(session):
        def measure():
            time.sleep(args.settle)
            r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            time.sleep(args.seconds)
            r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            out.update(cpu_s=cpu, wall_s=w1 - w0, threads=threading.active_count())
            session.stop()
        threading.Thread(target=measure, daemon=True).start()

    with tempfile.TemporaryDirectory() as home:
        paper(_stamp_strategy(), _symbols(args.symbols), bus=args.bus, settings=_settings(home),
              qcheck=args.qcheck, topic=f"idle-{uuid.uuid4().hex[:8]}",
              duration=args.settle + args.seconds + 30, on_start=on_start)
    return out


CHILDREN = {"memory": child_memory, "paper-pubsub": child_paper_pubsub, "raw-pubsub": child_raw_pubsub,
            "idle": child_idle}


# -- the parent ----------------------------------------------------------------------------------

def _env(emulator_host: str | None = None) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "FARM_PROGRESS": "off"}
    env.pop("PUBSUB_EMULATOR_HOST", None)
    if emulator_host:
        env["PUBSUB_EMULATOR_HOST"] = emulator_host
    return env


def _spawn(kind: str, workdir: Path, *, env: dict | None = None, ready: bool = False, **options) -> subprocess.Popen:
    """Start a child; it writes its result as JSON to a file (a pipe could fill up while the parent
    is busy publishing) and, with ``ready``, says ``ready`` on stdout once subscribed."""
    name = f"{kind}-{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, __file__, "--child", kind, "--out", str(workdir / f"{name}.json")]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    with open(workdir / f"{name}.err", "wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if ready else subprocess.DEVNULL,
                                stdout=subprocess.PIPE if ready else subprocess.DEVNULL, stderr=err,
                                text=True, env=env or _env())
    proc.name, proc.workdir = name, workdir
    return proc


def _result(proc: subprocess.Popen, timeout: float) -> dict:
    err = lambda: (proc.workdir / f"{proc.name}.err").read_text(errors="replace")[-4000:]
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise SystemExit(f"{proc.name} did not finish in {timeout:.0f} s:\n{err()}")
    if proc.returncode != 0:
        raise SystemExit(f"{proc.name} failed ({proc.returncode}):\n{err()}")
    return json.loads((proc.workdir / f"{proc.name}.json").read_text())


def _run(kind: str, workdir: Path, timeout: float, env: dict | None = None, **options) -> dict:
    return _result(_spawn(kind, workdir, env=env, **options), timeout)


def _pct(values, q: float) -> float:
    import numpy as np
    return float(np.percentile(np.asarray(values, dtype="float64"), q)) if len(values) else float("nan")


def _latencies_ms(samples, since_us: int | None = None) -> list[float]:
    return [(recv - pub) / 1000.0 for _, pub, recv in samples if since_us is None or pub >= since_us]


def _first(samples) -> dict:
    """First arrival of each (symbol, publish µs): a redelivered message counts once."""
    out: dict = {}
    for symbol, pub, recv in samples:
        out.setdefault((symbol, pub), recv)
    return out


def memory_latency(symbols: int, args) -> dict:
    report = _run("memory", args.workdir, timeout=args.seconds + 120, symbols=symbols,
                  ticks_per_s=args.rate / symbols, seconds=args.seconds, drain=10, qcheck=args.qcheck)
    since = report["first_pub_us"] + int(args.warmup * 1e6)
    samples = [x for x in report["samples"] if x[1] >= since]
    lat = _latencies_ms(samples)
    complete = _from_last_publish_ms(samples)
    added, processing = _added_ms(samples, report["callbacks"])
    return {"p50": _pct(lat, 50), "p90": _pct(lat, 90), "p99": _pct(lat, 99), "max": max(lat, default=float("nan")),
            "complete_p50": _pct(complete, 50), "complete_p99": _pct(complete, 99),
            "added_p50": _pct(added, 50), "added_p99": _pct(added, 99),
            "processing_p50": _pct(processing, 50), "processing_p99": _pct(processing, 99),
            "n": len(lat), "lost": report["published"] - len(_first(report["samples"]))}


def _added_ms(samples, callbacks, since_us: int = 0) -> tuple[list[float], list[float]]:
    """What farmkit adds on top of the bus client's callback, (per message, per next() call):
    per message, next() minus the callback of that message (it includes waiting for the other symbols
    of the same timestamp: backtrader calls next() once every feed has its bar); per next() call,
    next() minus the callback of the last of its bars to arrive (farmkit's own processing)."""
    ours, client = _first(samples), _first(callbacks)
    per_message, last_callback = [], {}
    for key, recv in ours.items():
        if key[1] < since_us or key not in client:
            continue
        per_message.append((recv - client[key]) / 1000)
        last_callback[recv] = max(client[key], last_callback.get(recv, 0))
    return per_message, [(recv - cb) / 1000 for recv, cb in last_callback.items()]


def _stages_ms(result: dict, since_us: int) -> dict[str, list[float]]:
    """``added_processing`` of each next() call split at the stamps of its last bar (the one whose
    callback came last): ``in_callback`` = callback -> queued on its feed (router: parse, dedupe);
    ``to_strategy_thread`` = queued -> returned by the feed's ``_load()`` on the strategy thread
    (waking it, the GIL, the CPU, and loading the feeds ahead of it); ``to_next`` = that -> next()
    (loading the feeds after it, backtrader's loop). The three add up to ``added_processing``."""
    client, queued, loaded = (_first(result[k]) for k in ("callbacks", "queued", "loaded"))
    calls: dict[int, list] = {}
    for key, recv in _first(result["samples"]).items():
        if key[1] >= since_us and key in client:
            calls.setdefault(recv, []).append(key)
    out: dict[str, list[float]] = {"in_callback": [], "to_strategy_thread": [], "to_next": []}
    for recv, keys in calls.items():
        last = max(keys, key=client.__getitem__)
        if last in queued and last in loaded:
            out["in_callback"].append((queued[last] - client[last]) / 1000)
            out["to_strategy_thread"].append((loaded[last] - queued[last]) / 1000)
            out["to_next"].append((recv - loaded[last]) / 1000)
    return out


def _from_last_publish_ms(samples) -> list[float]:
    """Per next() call: its clock minus the publish time of the last bar it received (bars of one
    timestamp reach next() together), i.e. latency once the timestamp's burst was complete."""
    last: dict[int, int] = {}
    for _, pub, recv in samples:
        last[recv] = max(pub, last.get(recv, pub))
    return [(recv - pub) / 1000 for recv, pub in last.items()]


def emulator_latency(emulator_host: str, symbols: int, args, paper_cpus: set[int] | None = None) -> dict:
    """One emulator round; ``paper_cpus``: the CPUs the fk.paper process runs on (default: any)."""
    from farmkit.bus import open_bus

    env, workdir = _env(emulator_host), args.workdir
    topic = f"bench-{uuid.uuid4().hex[:10]}"
    ticks = max(1, round(args.emulator_seconds * args.emulator_rate / symbols))
    expected = ticks * symbols
    deadline = args.emulator_seconds + 60
    common = dict(topic=topic, expected=expected, deadline=deadline, symbols=symbols, qcheck=args.qcheck)
    pinned = {"paper-pubsub": {"cpus": _cpu_list(paper_cpus)} if paper_cpus else {}}
    procs = {kind: _spawn(kind, workdir, env=env, ready=True, subscription=f"{topic}-{kind}", **common,
                          **pinned.get(kind, {}))
             for kind in ("raw-pubsub", "paper-pubsub")}
    try:
        for kind, proc in procs.items():
            if proc.stdout.readline().strip() != "ready":
                proc.kill()
                proc.wait()
                raise SystemExit(f"{kind} did not start:\n"
                                 + (workdir / f"{proc.name}.err").read_text(errors="replace")[-4000:])
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator_host
        bus = open_bus(f"pubsub://{PROJECT}")
        try:
            published = publish_paced(bus, topic, _symbols(symbols), args.emulator_rate / symbols, ticks)
        finally:
            bus.close()
            del os.environ["PUBSUB_EMULATOR_HOST"]
        results = {}
        for kind, proc in procs.items():
            # Each ends by itself once every message arrived; after the drain time it is told to stop.
            try:
                proc.wait(args.drain)
            except subprocess.TimeoutExpired:
                proc.stdin.write("stop\n")
                proc.stdin.flush()
            results[kind] = _result(proc, timeout=60)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    since = published["first_pub_us"] + int(args.warmup * 1e6)
    raw = _first(results["raw-pubsub"]["samples"])
    ours = _first(results["paper-pubsub"]["samples"])
    client = _first(results["paper-pubsub"]["callbacks"])
    lat = lambda arrivals: [(r - p) / 1000 for (s, p), r in arrivals.items() if p >= since]
    raw_lat, our_lat, client_lat = lat(raw), lat(ours), lat(client)
    added, processing = _added_ms(results["paper-pubsub"]["samples"], results["paper-pubsub"]["callbacks"], since)
    stages = {f"{name}_{q}": _pct(values, q) for name, values in _stages_ms(results["paper-pubsub"], since).items()
              for q in (50, 99)}
    return {**stages, "switch_interval": results["paper-pubsub"]["switch_interval"],"raw_p50": _pct(raw_lat, 50), "raw_p99": _pct(raw_lat, 99),
            "client_p50": _pct(client_lat, 50), "client_p99": _pct(client_lat, 99),
            "paper_p50": _pct(our_lat, 50), "paper_p99": _pct(our_lat, 99),
            "added_p50": _pct(added, 50), "added_p99": _pct(added, 99),
            "processing_p50": _pct(processing, 50), "processing_p99": _pct(processing, 99),
            "processing_max": max(processing, default=float("nan")),
            "added_p99_of_difference": _pct(our_lat, 99) - _pct(raw_lat, 99), "n": len(added),
            "published": published["published"], "raw_lost": published["published"] - len(raw),
            "paper_lost": published["published"] - len(ours),
            "publish_rate": published["published"] / published["publish_wall_s"]}


def idle_cpu(bus: str, args, env: dict | None = None) -> float:
    out = _run("idle", args.workdir, timeout=args.idle_seconds + 120, env=env, bus=bus, symbols=1,
               seconds=args.idle_seconds, settle=0.5 if args.quick else 1.0, qcheck=args.qcheck)
    return out["cpu_s"] / out["wall_s"]


def throughput(args) -> dict:
    report = _run("memory", args.workdir, timeout=args.tp_seconds + 300, symbols=args.tp_symbols,
                  ticks_per_s=args.tp_rate, seconds=args.tp_seconds, drain=60, qcheck=args.qcheck)
    samples = report["samples"]
    first = _first(samples)
    duplicates_to_next = len(samples) - len(first)
    processed = len(first)
    last_next = max((r for _, _, r in samples), default=report["first_pub_us"])
    lat = _latencies_ms(samples)
    tail_from = report["first_pub_us"] + int(0.9 * (report["last_pub_us"] - report["first_pub_us"]))
    tail = _latencies_ms(samples, tail_from)
    return {"published": report["published"], "processed": processed,
            "router_duplicates": report["counts"].get("duplicate", 0),
            "duplicates_to_next": duplicates_to_next,
            "lost": report["published"] - processed,
            "published_bars_per_s": report["published"] / report["publish_wall_s"],
            "processed_bars_per_s": processed / max(1e-9, (last_next - report["first_pub_us"]) / 1e6),
            "lag_end_ms": (last_next - report["last_pub_us"]) / 1000,
            "p50": _pct(lat, 50), "p99": _pct(lat, 99), "tail_p99": _pct(tail, 99),
            "ticks_behind": report["ticks_behind"]}


def _emulator():
    sys.path.insert(0, str(ROOT))
    try:
        from tests.pubsub_emulator import PubSubEmulator, find_emulator_jar
    except ImportError as exc:
        return None, f"cannot import tests.pubsub_emulator: {exc}"
    jar, reason = find_emulator_jar()
    if jar is None:
        return None, reason
    return PubSubEmulator(jar), ""


_STARTED = time.perf_counter()


def _emulator_rounds(args, paper_cpus: set[int] | None, other_cpus: set[int] | None) -> list[dict]:
    """``--rounds`` emulator rounds on an emulator of their own. With ``paper_cpus``, the fk.paper
    process runs there and this process, the emulator and the raw subscriber on ``other_cpus``;
    without, the first round also carries the idle CPU of a paper session on the emulator."""
    where = f"fk.paper on CPU {_cpu_list(paper_cpus)}" if paper_cpus else "every process on every CPU"
    mine = os.sched_getaffinity(0)
    if other_cpus:
        os.sched_setaffinity(0, other_cpus)   # the emulator's JVM and the raw subscriber inherit it
    try:
        emulator, _ = _emulator()
        with emulator:
            _note(f"emulator ready on {emulator.host} ({where})")
            rounds = []
            for r in range(args.rounds):
                rounds.append(emulator_latency(emulator.host, args.emulator_symbols, args, paper_cpus))
                _note(f"emulator round {r + 1} ({where}): raw p99 {rounds[-1]['raw_p99']:.1f} ms, paper p99 "
                      f"{rounds[-1]['paper_p99']:.1f} ms, added p99 {rounds[-1]['added_p99']:.2f} ms per message, "
                      f"{rounds[-1]['processing_p99']:.2f} ms processing")
            if not paper_cpus:
                rounds[0]["idle_cpu"] = idle_cpu(f"pubsub://{PROJECT}", args, env=_env(emulator.host))
    finally:
        os.sched_setaffinity(0, mine)
    return rounds


def _cpu_list(cpus) -> str:
    return ",".join(map(str, sorted(cpus)))


def _note(text: str) -> None:
    print(f"# [{time.perf_counter() - _STARTED:5.1f} s] {text}", file=sys.stderr, flush=True)


def _median(rounds: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI size: 1 round of 2 s, throughput 20 symbols x 10 s")
    parser.add_argument("--rounds", type=int, help="rounds of each latency scenario (default 3; 1 with --quick)")
    parser.add_argument("--rate", type=float, default=200.0, help="memory bus latency runs: bars/s in total")
    parser.add_argument("--seconds", type=float, help="length of a latency run (default 10; 2 with --quick)")
    parser.add_argument("--warmup", type=float, help="seconds not counted at the start of a latency run")
    parser.add_argument("--emulator-rate", type=float, default=200.0, help="emulator run: messages/s")
    parser.add_argument("--emulator-symbols", type=int, default=10,
                        help="emulator run: symbols (ordering keys; the emulator delivers ~120 msg/s per key)")
    parser.add_argument("--idle-seconds", type=float, help="idle CPU window (default 10; 2 with --quick)")
    parser.add_argument("--tp-symbols", type=int, help="throughput: symbols (default 100; 20 with --quick)")
    parser.add_argument("--tp-rate", type=float, default=10.0, help="throughput: timestamps/s (bars/s = x symbols)")
    parser.add_argument("--tp-seconds", type=float, help="throughput: seconds (default 60; 10 with --quick)")
    parser.add_argument("--qcheck", type=float, default=0.5, help="LiveFeed qcheck, as fk.paper's default")
    parser.add_argument("--no-emulator", action="store_true", help="skip the emulator scenarios")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    for hidden in ("symbols", "expected"):
        parser.add_argument(f"--{hidden}", type=int, help=argparse.SUPPRESS)
    for hidden in ("ticks-per-s", "drain", "deadline", "settle"):
        parser.add_argument(f"--{hidden}", type=float, help=argparse.SUPPRESS)
    for hidden in ("topic", "subscription", "bus", "out", "cpus"):
        parser.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child and args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})   # before any thread starts
    if args.child:
        Path(args.out).write_text(json.dumps(CHILDREN[args.child](args)))
        return
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (2.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else 1.5   # past the first FMEL flush (~1 s in)
    args.emulator_seconds = args.seconds + args.warmup
    args.seconds += args.warmup
    args.idle_seconds = args.idle_seconds or (2.0 if args.quick else 10.0)
    args.tp_symbols = args.tp_symbols or (20 if args.quick else 100)
    args.tp_seconds = args.tp_seconds or (10.0 if args.quick else 60.0)
    args.drain = 15.0
    with tempfile.TemporaryDirectory(prefix="bench-live-") as workdir:
        args.workdir = Path(workdir)
        lines = _measure(args)
    for name, value in lines:
        print(f"{name}={value:.3f}" if isinstance(value, float) else f"{name}={value}")


def _measure(args) -> list[tuple[str, object]]:

    lines: list[tuple[str, object]] = [("rounds", args.rounds), ("latency_run_s", args.seconds - args.warmup),
                                       ("memory_rate_bars_per_s", args.rate), ("qcheck_s", args.qcheck)]
    memory = {}
    for symbols in (1, 10):
        rounds = []
        for r in range(args.rounds):
            rounds.append(memory_latency(symbols, args))
            _note(f"memory {symbols} symbol(s) round {r + 1}: p99 {rounds[-1]['p99']:.3f} ms")
        memory[symbols] = rounds
        name = f"memory_{symbols}sym"
        lines += [(f"{name}_p50_ms", _median(rounds, "p50")), (f"{name}_p90_ms", _median(rounds, "p90")),
                  (f"{name}_p99_ms", _median(rounds, "p99")), (f"{name}_max_ms", max(r["max"] for r in rounds))]
        if symbols > 1:
            lines += [(f"{name}_from_last_publish_p50_ms", _median(rounds, "complete_p50")),
                      (f"{name}_from_last_publish_p99_ms", _median(rounds, "complete_p99"))]
        lines += [(f"{name}_added_per_message_p50_ms", _median(rounds, "added_p50")),
                  (f"{name}_added_per_message_p99_ms", _median(rounds, "added_p99")),
                  (f"{name}_added_processing_p50_ms", _median(rounds, "processing_p50")),
                  (f"{name}_added_processing_p99_ms", _median(rounds, "processing_p99")),
                  (f"{name}_lost", sum(r["lost"] for r in rounds))]
    lines.append(("idle_cpu_memory_core_fraction", idle_cpu("memory://", args)))
    _note("idle memory done")

    headline = None
    emulator, reason = (None, "--no-emulator") if args.no_emulator else _emulator()
    if emulator is None:
        _note(f"emulator unavailable: {reason}")
        lines.append(("emulator", "unavailable"))
    else:
        cpus = sorted(os.sched_getaffinity(0))
        paper_cpus, other_cpus = ({cpus[-1]}, set(cpus[:-1])) if len(cpus) > 1 else (None, None)
        shared = _emulator_rounds(args, None, None)
        pinned = _emulator_rounds(args, paper_cpus, other_cpus) if paper_cpus else []
        rounds, every = pinned or shared, pinned + shared
        lines += [("emulator", "available"), ("emulator_rate_msgs_per_s", args.emulator_rate),
                  ("emulator_symbols", args.emulator_symbols),
                  ("emulator_paper_cpus", _cpu_list(paper_cpus) if paper_cpus else "shared"),
                  ("emulator_other_cpus", _cpu_list(other_cpus) if other_cpus else "shared")]
        lines.append(("emulator_publish_rate_msgs_per_s", _median(rounds, "publish_rate")))
        for key in ("raw_p50", "raw_p99", "client_p50", "client_p99", "paper_p50", "paper_p99"):
            lines.append((f"emulator_{key}_ms", _median(rounds, key)))
        lines += [("emulator_added_per_message_p50_ms", _median(rounds, "added_p50")),
                  ("emulator_added_per_message_p99_ms", _median(rounds, "added_p99")),
                  ("emulator_added_processing_p50_ms", _median(rounds, "processing_p50")),
                  ("emulator_added_processing_max_ms", max(r["processing_max"] for r in rounds))]
        lines += [(f"emulator_processing_{name}_p{q}_ms", _median(rounds, f"{name}_{q}"))
                  for name in ("in_callback", "to_strategy_thread", "to_next") for q in (50, 99)]
        interval = rounds[0]["switch_interval"]
        lines += [("emulator_paper_switch_interval_ms", interval * 1000 if interval else "unknown"),
                  ("emulator_raw_lost", sum(r["raw_lost"] for r in every)),
                  ("emulator_paper_lost", sum(r["paper_lost"] for r in every)),
                  ("added_p99_of_difference_ms", _median(shared, "added_p99_of_difference"))]
        lines += [(f"emulator_shared_cores_{key}_ms", _median(shared, key))
                  for key in ("raw_p99", "paper_p99", "processing_p50", "processing_p99")]
        lines.append(("idle_cpu_pubsub_core_fraction", shared[0]["idle_cpu"]))
        headline = ("added_latency_p99_ms", _median(rounds, "processing_p99"))

    tp = throughput(args)
    _note(f"throughput: {tp['processed']}/{tp['published']} bars, lag {tp['lag_end_ms']:.1f} ms")
    lines += [("throughput_symbols", args.tp_symbols), ("throughput_seconds", args.tp_seconds),
              ("throughput_target_bars_per_s", args.tp_symbols * args.tp_rate),
              ("throughput_published", tp["published"]), ("throughput_processed", tp["processed"]),
              ("throughput_duplicates", tp["router_duplicates"] + tp["duplicates_to_next"]),
              ("throughput_lost", tp["lost"]),
              ("throughput_published_bars_per_s", tp["published_bars_per_s"]),
              ("throughput_processed_bars_per_s", tp["processed_bars_per_s"]),
              ("throughput_lag_end_ms", tp["lag_end_ms"]), ("throughput_p50_ms", tp["p50"]),
              ("throughput_p99_ms", tp["p99"]), ("throughput_last_tenth_p99_ms", tp["tail_p99"]),
              ("throughput_publisher_ticks_behind", tp["ticks_behind"])]
    lines.append(headline or ("memory_1sym_p99_ms", _median(memory[1], "p99")))
    return lines


if __name__ == "__main__":
    main()
