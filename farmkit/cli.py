"""The `farm` command."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from farmkit.errors import FarmError

_EPILOG = """examples:
  farm backtest notebooks/strategies/sma_crossover.ipynb
  farm backtest notebooks/strategies/sma_crossover.ipynb -p fast 5 -p slow 50 -p symbols AAPL,MSFT
  farm sweep notebooks/strategies/sma_crossover.ipynb --grid fast=5,10 --grid slow=30,60 --workers 2
  farm check-lookahead notebooks/strategies/sma_crossover.ipynb
  farm promote notebooks/strategies/sma_crossover.ipynb --name sma-cross
  farm paper agents/sma-crossover --replay synthetic --speed 60   # paper trading, no keys needed
  farm ingest --source synthetic --stocks AAPL,MSFT --speed 60    # market data onto the bus (FARM_BUS)
  farm archive                   # bars and news from the bus into the store
  farm deploy agents/sma-crossover --dry-run   # the agent's Kubernetes manifests
  farm serve                     # the REST API on http://127.0.0.1:8000 (a token is printed)
  farm parity RUN_ID --strategy strategies.py:SmaCross
  farm leaderboard               # the best agents by Sharpe (Redis)
  farm runs                      # recent runs with their metrics
  farm explain RUN_ID --bar 120  # why the strategy did what it did at bar 120

Everything is kept under FARM_HOME (default ./.farm): FMEL, the run registry, executed notebooks
and tearsheets (runs/RUN_ID/)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm", description="The Farm: notebook backtests with full market "
                                     "event logging.", epilog=_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    bt = sub.add_parser("backtest", help="run a strategy notebook as a backtest (papermill)",
                        description="Run a notebook whose cell tagged 'parameters' holds the defaults. "
                        "The executed notebook and the HTML tearsheet are written to FARM_HOME/runs/RUN_ID/.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example:\n  farm backtest notebooks/strategies/sma_crossover.ipynb -p fast 5 -p slow 50")
    bt.add_argument("notebook", help="path to the .ipynb")
    bt.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override a parameter (repeatable); values take the type of the notebook's default")
    bt.add_argument("--no-progress", action="store_true", help="no cell progress bar")
    bt.set_defaults(handler=_backtest)

    sw = sub.add_parser("sweep", help="run a notebook over a parameter grid (one papermill run per trial)",
                        description="Every grid point is a full backtest of the notebook, registered under one "
                        "sweep id; the trial table is printed and saved to FARM_HOME/sweeps/SWEEP_ID/trials.csv.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example:\n  farm sweep notebooks/strategies/sma_crossover.ipynb "
                        "--grid fast=5,10,20 --grid slow=50,100 --workers 2")
    sw.add_argument("notebook")
    sw.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...", required=True,
                    help="a parameter and its values (repeatable)")
    sw.add_argument("--workers", type=int, default=1, help="trials run at once (default 1)")
    sw.add_argument("--no-progress", action="store_true")
    sw.set_defaults(handler=_sweep)

    la = sub.add_parser("check-lookahead", help="check a strategy notebook for look-ahead bias",
                        description="Run the notebook, then re-run its last backtest on data cut at several "
                        "points: a bar whose decisions or tracked values change when later bars are removed "
                        "used the future. Exits 1 when it finds one.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example:\n  farm check-lookahead notebooks/strategies/sma_crossover.ipynb -p days 5")
    la.add_argument("notebook")
    la.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override a parameter (repeatable)")
    la.add_argument("--cuts", type=int, default=5, help="truncation points (default 5)")
    la.set_defaults(handler=_check_lookahead)

    pr = sub.add_parser("promote", help="turn a research notebook into a verified agent under agents/",
                        description="Copy the notebook to agents/NAME/agent.ipynb (outputs stripped) with an "
                        "agent.yaml manifest, then run both and check that they take identical decisions.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="examples:\n  farm promote notebooks/strategies/sma_crossover.ipynb --name sma-cross\n"
                        "  farm promote --check agents/sma-cross")
    pr.add_argument("notebook", help="the research notebook; with --check, the agent folder to re-verify")
    pr.add_argument("--name", help="agent name: lowercase letters, digits and dashes")
    pr.add_argument("--agents-dir", default="agents", help="where agents live (default agents/)")
    pr.add_argument("--force", action="store_true", help="replace an existing agent of that name")
    pr.add_argument("--image", help="runner image to pin the agent to, ideally REPO/runner@sha256:DIGEST "
                    "(default FARM_RUNNER_IMAGE)")
    pr.add_argument("--check", action="store_true",
                    help="re-verify an existing agent against its agent.yaml (notebook, lock and installed "
                    "packages, decisions, data fingerprint, warm-up, image); exits 1 if anything differs")
    pr.set_defaults(handler=_promote)

    pa = sub.add_parser("parity", help="replay a paper run through a backtest and compare decisions and fills",
                        description="Rebuild the bars a paper run consumed from its FMEL, backtest the same "
                        "strategy on them with the run's parameters and broker model, and compare decisions, "
                        "orders, fills (size, price, commission) and positions bar by bar: identical, or the "
                        "first divergence by field with both records side by side. Exits 1 on a divergence.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="examples:\n"
                        "  farm parity paper-20261124-101500-ab12cd --strategy strategies.py:SmaCross\n"
                        "  farm parity paper-20261124-101500-ab12cd --strategy mypackage.strategies:SmaCross\n"
                        "  farm parity paper-20261124-101500-ab12cd --strategy notebooks/strategies/sma_crossover.ipynb\n"
                        "  farm parity paper-20261124-101500-ab12cd --strategy agents/sma-crossover")
    pa.add_argument("run_id")
    pa.add_argument("--strategy", required=True, metavar="SPEC",
                    help="the strategy: FILE.py:CLASS, module:CLASS, NOTEBOOK.ipynb[:CLASS] or an agent folder")
    pa.set_defaults(handler=_parity)

    lb = sub.add_parser("leaderboard", help="the best agents by a metric (Redis leaderboards)",
                        description="Agents ranked by the best run of each on a board (backtest or paper). "
                        "The embedded Redis under FARM_HOME is used unless FARM_REDIS points elsewhere.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="examples:\n  farm leaderboard\n  farm leaderboard --metric dsr --board paper -n 20")
    lb.add_argument("--metric", default="sharpe", choices=["sharpe", "dsr", "total_return", "max_drawdown"])
    lb.add_argument("--board", default="backtest", choices=["backtest", "paper"])
    lb.add_argument("-n", type=int, default=10, help="how many agents (default 10)")
    lb.add_argument("--rebuild", action="store_true", help="record every finished run of the registry again first")
    lb.set_defaults(handler=_leaderboard)

    runs = sub.add_parser("runs", help="list recent runs with their metrics")
    runs.add_argument("-n", type=int, default=20, help="how many (default 20)")
    runs.set_defaults(handler=_runs)

    ex = sub.add_parser("explain", help="explain one bar of a run from its FMEL")
    ex.add_argument("run_id")
    group = ex.add_mutually_exclusive_group(required=True)
    group.add_argument("--bar", type=int, help="bar number (0-based)")
    group.add_argument("--at", help="timestamp (UTC unless it says otherwise)")
    ex.set_defaults(handler=_explain)

    from farmkit.api import register as register_serve
    from farmkit.ops.deploy import register as register_deploy
    register_deploy(sub)            # farm deploy
    register_serve(sub)             # farm serve
    _register_services(sub)         # farm runner, farm paper, farm ingest, farm archive
    return parser


COMMANDS = "farm.commands"   # entry-point group: a service's register(subparsers) adds its subcommands


def _register_services(sub) -> None:
    """The services built on farmkit (the runner, the ingester) add their own subcommands through the
    ``farm.commands`` entry points of the installed distribution: the library never imports them."""
    from importlib.metadata import entry_points

    for point in sorted(entry_points(group=COMMANDS), key=lambda p: p.name):
        point.load()(sub)


def _metrics_lines(metrics: dict | None) -> list[str]:
    if not metrics:
        return ["  (no metrics: the notebook ran no fk.backtest)"]
    from farmkit.report import metrics_table
    table = metrics_table(metrics)
    return ["  " + line for line in table.to_string(header=False).splitlines()]


def _backtest(args) -> int:
    from farmkit.research import notebooks
    params = dict(args.parameter)
    print(f"Running {args.notebook}" + (f" with {params}" if params else ""), file=sys.stderr)
    result = notebooks.run(args.notebook, params, progress=not args.no_progress)
    run = result.run
    print(f"\nrun {result.run_id}  {run.get('strategy')}  status={result.status}")
    if run.get("params"):
        print("params: " + ", ".join(f"{k}={v}" for k, v in run["params"].items()))
    print("\n".join(_metrics_lines(run.get("metrics"))))
    print(f"\nexecuted notebook: {result.output}")
    if result.tearsheet:
        print(f"tearsheet:         {result.tearsheet}")
    print(f"explain a bar:     farm explain {result.run_id} --bar N")
    _print_leaderboard()
    return 0


def _print_leaderboard() -> None:
    from farmkit import leaderboard
    try:
        top = leaderboard.top("sharpe", 5, "backtest")
    except FarmError as exc:  # the leaderboard is a view: without it the run still stands
        print(f"leaderboard:       unavailable ({exc})")
        return
    if len(top):
        print("\nleaderboard (backtest, by Sharpe):")
        print(leaderboard.cli_table(top))


def _sweep(args) -> int:
    from farmkit.research import notebooks
    from farmkit.errors import ParameterError
    grid = {}
    for item in args.grid:
        name, sep, values = item.partition("=")
        if not sep or not name:
            raise ParameterError(f"--grid expects NAME=V1,V2,... (e.g. fast=5,10,20), got {item!r}")
        grid[name.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    sweep_id, table = notebooks.sweep(args.notebook, grid, workers=args.workers, progress=not args.no_progress)
    shown = [c for c in [*grid, "status", "sharpe", "total_return", "max_drawdown", "trades", "run_id"]
             if c in table.columns]
    print(f"sweep {sweep_id}: {len(table)} trials, {int((table.status == 'done').sum())} done")
    with pd.option_context("display.width", 160):
        print(table[shown].sort_values("sharpe", ascending=False, na_position="last").to_string(index=False)
              if "sharpe" in table else table[shown].to_string(index=False))
    failed = table[table.status != "done"]
    for row in failed.itertuples():
        print(f"failed: {row.error}", file=sys.stderr)
    return 0 if failed.empty else 1


def _check_lookahead(args) -> int:
    from farmkit.research.lookahead import check_notebook
    print(f"Checking {args.notebook} for look-ahead ({args.cuts} truncated re-runs)...", file=sys.stderr)
    report = check_notebook(args.notebook, dict(args.parameter), cuts=args.cuts)
    print(("OK: " if report["ok"] else "LOOK-AHEAD: ") + report["message"])
    if not report["ok"]:
        table = pd.DataFrame(report["differences"]).head(10)
        with pd.option_context("display.width", 160, "display.max_colwidth", 40):
            print(table.to_string(index=False))
    return 0 if report["ok"] else 1


def _promote(args) -> int:
    from farmkit.ops.promote import check as check_agent, promote
    if args.check:
        print(f"Re-verifying {args.notebook} against its manifest (runs it once)...", file=sys.stderr)
        report = check_agent(args.notebook)
        print(report)
        return 0 if report.ok else 1
    if not args.name:
        print("farm promote: --name NAME is required (the agent's name), e.g. "
              f"farm promote {args.notebook} --name my-agent", file=sys.stderr)
        return 2
    print(f"Promoting {args.notebook} to {args.agents_dir}/{args.name} (runs it twice to verify)...", file=sys.stderr)
    agent = promote(args.notebook, args.name, agents_dir=args.agents_dir, force=args.force, image=args.image)
    check = agent.manifest.get("verification", {})
    print(f"agent {agent.name} at {agent.path}: strategy {agent.manifest.get('strategy')}, "
          f"{check.get('bars')} bars of decisions verified identical (sha256 {str(check.get('decisions_sha256'))[:12]})")
    return 0


def _parity(args) -> int:
    from farmkit.research.parity import load_strategy, parity
    report = parity(args.run_id, load_strategy(args.strategy))
    print(report)
    if not report.identical:
        with pd.option_context("display.width", 160, "display.max_colwidth", 60):
            print(report.side_by_side.to_string())
    return 0 if report.identical else 1


def _leaderboard(args) -> int:
    from farmkit import leaderboard
    if args.rebuild:
        print(f"recorded {leaderboard.rebuild()} run(s) again", file=sys.stderr)
    print(leaderboard.cli_table(leaderboard.top(args.metric, args.n, args.board)))
    return 0


def _runs(args) -> int:
    from farmkit import fmel
    frame = fmel.runs()
    if frame.empty:
        print("no runs yet: try `farm backtest notebooks/strategies/sma_crossover.ipynb`")
        return 0
    frame = frame.tail(args.n)
    metrics = pd.json_normalize(frame["metrics"].map(lambda m: m if isinstance(m, dict) else {}))
    table = pd.DataFrame({
        "run_id": frame["run_id"].to_numpy(), "strategy": frame["strategy"].to_numpy(),
        "status": frame["status"].to_numpy(),
        "started": frame["started_at"].dt.strftime("%Y-%m-%d %H:%M").to_numpy(),
    })
    for col, fmt in (("total_return", "{:+.2%}"), ("sharpe", "{:.2f}"), ("max_drawdown", "{:.2%}"), ("trades", "{:.0f}")):
        table[col] = metrics[col].map(lambda v: fmt.format(v) if pd.notna(v) else "") if col in metrics else ""
    print(table.to_string(index=False))
    if (table["status"] == "killed").any():
        print("killed: the run's process ended without saying how (SIGKILL, out of memory, a lost machine); "
              "its FMEL is kept up to the last bar written", file=sys.stderr)
    return 0


def _explain(args) -> int:
    from farmkit import fmel
    table = fmel.explain(args.run_id, bar=args.bar, timestamp=args.at)
    print(f"run {args.run_id}  bar {table.attrs['bar_number']}  {table.attrs['timestamp']}")
    with pd.option_context("display.max_colwidth", 120, "display.width", 160):
        print(table.to_string())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (FarmError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"farm {args.command}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
