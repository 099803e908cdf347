"""The runner's subcommands of the `farm` command: `farm runner` (the pod) and `farm paper` (the same
in the foreground). Registered through the ``farm.commands`` entry point."""

from __future__ import annotations

import argparse

from farmkit.errors import FarmError


def register(sub) -> None:
    """Add ``runner`` and ``paper`` to an argparse subparsers object."""
    rn = sub.add_parser("runner", help="run an agent as a paper-trading pod (what the StatefulSet runs)",
                        description="Run agents/NAME/agent.ipynb in paper mode through papermill, with /healthz, "
                        "/readyz and /metrics on FARM_HEALTH_PORT, checkpoints in FARM_STATE_DIR, and a clean "
                        "stop on SIGTERM. Settings come from the environment (FARM_BUS, FARM_SUBSCRIPTION, ...).",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example:\n  FARM_BUS=pubsub://my-project FARM_STATE_DIR=/state farm runner agents/sma-cross")
    rn.add_argument("agent_dir")
    rn.add_argument("--grace", type=float, default=20.0, help="seconds to stop cleanly after SIGTERM (default 20)")
    rn.set_defaults(handler=_runner)

    pp = sub.add_parser("paper", help="paper-trade an agent in the foreground, decisions streaming in the terminal",
                        description="Run agents/NAME/agent.ipynb in paper mode (as the pod does) and print each "
                        "decision as it is committed to FMEL. With --replay the session publishes a replayed "
                        "market on its own in-process bus: no keys, no Pub/Sub, a fresh state each time. "
                        "Without it, bars come from FARM_BUS (e.g. pubsub://PROJECT, fed by `farm ingest`). "
                        "Ctrl-C (or SIGTERM) stops cleanly: FMEL flushed, checkpoint saved, metrics printed.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="examples:\n"
                        "  farm paper agents/sma-crossover --replay synthetic --speed 60\n"
                        "  farm paper agents/sma-crossover --replay data/AAPL.csv --speed 600\n"
                        "  FARM_BUS=pubsub://my-project farm paper agents/sma-crossover --duration 3600")
    pp.add_argument("agent_dir", help="the agent folder (agent.ipynb + agent.yaml), e.g. agents/sma-crossover")
    pp.add_argument("--replay", metavar="synthetic|FILE",
                    help="replay a market: 'synthetic' (carries on from the notebook's data) or a CSV/Parquet "
                    "file of bars (the run ends with the file)")
    pp.add_argument("--speed", type=float, default=None,
                    help="replay speed as a multiple of real time (default 60: a minute bar per second)")
    pp.add_argument("--duration", type=float, help="stop after this many seconds")
    pp.add_argument("--bars", type=int, metavar="N",
                    help="stop after exactly N live bars (the warm-up bars that prime the indicators not counted)")
    pp.set_defaults(handler=_paper)



def _runner(args) -> int:
    from runner.service import main as runner_main
    return runner_main([args.agent_dir, "--grace", str(args.grace)])


def _paper(args) -> int:
    from farmkit.settings import Settings
    from runner import console
    if args.speed is not None and not args.replay:
        raise FarmError("--speed is the speed of a replay: give --replay synthetic or --replay FILE too")
    if args.bars is not None and args.bars < 1:
        raise FarmError(f"--bars must be a whole number >= 1, got {args.bars}")
    if args.speed is not None and args.speed <= 0:
        raise FarmError(f"--speed must be > 0, got {args.speed:g}")
    return console.run(args.agent_dir, Settings.from_env(), replay=args.replay, speed=args.speed,
                       duration=args.duration, bars=args.bars)
