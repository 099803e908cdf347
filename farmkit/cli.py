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
  farm leaderboard               # the best agents by deflated Sharpe (Redis)
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
                        epilog="examples:\n  farm sweep notebooks/strategies/sma_crossover.ipynb "
                        "--grid fast=5,10,20 --grid slow=50,100 --workers 2\n"
                        "  farm sweep notebooks/strategies/sma_crossover.ipynb --search tpe --trials 40 --seed 1 "
                        "--grid fast=3..30 --grid slow=20..200 --constraint 'fast < slow' -p days=10")
    sw.add_argument("notebook")
    sw.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...", required=True,
                    help="a parameter and its values (repeatable, once per name); with --search tpe also "
                    "NAME=LO..HI, a range")
    sw.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                    help="a parameter fixed in every trial (repeatable)")
    sw.add_argument("--search", choices=["grid", "tpe"], default="grid",
                    help="grid: every combination (default); tpe: Optuna's TPE picks --trials points")
    sw.add_argument("--trials", type=int, metavar="N", help="trials of a --search tpe")
    sw.add_argument("--seed", type=int, help="seed of a --search tpe: the same trials in the same order")
    sw.add_argument("--constraint", action="append", default=[], metavar="EXPR",
                    help="with --search tpe, only points where EXPR holds run, e.g. 'fast < slow' (repeatable)")
    sw.add_argument("--split", metavar="FRACTION|DATE",
                    help="trials run on the bars before the split (in sample); the best is run on the rest, "
                    "and only that run goes on the leaderboard (e.g. 0.7 or 2024-01-10)")
    sw.add_argument("--warmup-bars", type=int, default=0, metavar="N",
                    help="with --split, bars before the out-of-sample start that warm its indicators up")
    sw.add_argument("--workers", type=int, default=1, help="trials run at once (default 1)")
    sw.add_argument("--no-progress", action="store_true")
    sw.set_defaults(handler=_sweep)

    la = sub.add_parser("check-lookahead", help="check a strategy notebook for look-ahead bias",
                        description="Run the whole notebook on all its data, then again with every fk.data source\n"
                        "cut at N timestamps, so that its cells see only the bars up to the cut. A bar whose\n"
                        "decisions or tracked values in the notebook's first fk.backtest change when later bars\n"
                        "are removed used the future. The report names the first such bar, the cell that most\n"
                        "likely leaks (where the notebook's own Series and DataFrames first differ, and known\n"
                        "patterns: negative shift, centred rolling window, whole-series statistics, reversed\n"
                        "cumulative operations, start-labelled resample, backward fill) and the difference.\n\n"
                        "--recursive (the default) also runs it with the first quarter of the bars dropped and\n"
                        "reports, apart from look-ahead, values or decisions that depend on how much history\n"
                        "came before, after a warm-up allowance of max(100, 10 x the strategy's warm-up) bars.\n\n"
                        "The verdict goes on the notebook's run (column lookahead); a version that fails is\n"
                        "withdrawn from the leaderboards. Exits 1 on look-ahead.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example:\n  farm check-lookahead notebooks/strategies/sma_crossover.ipynb -p days 5 --cuts 3")
    la.add_argument("notebook")
    la.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override a parameter (repeatable)")
    la.add_argument("--cuts", type=int, default=3, help="cut timestamps, each a run of the notebook (default 3)")
    la.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True,
                    help="also check whether decisions depend on the amount of warm-up data (default: yes)")
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
    pr.add_argument("--allow-overfit", action="store_true",
                    help="promote even when the overfitting gate refuses (DSR below 0.95 or PBO above 0.5 "
                    "over the strategy's trials); agent.yaml records that it was overridden")
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
                        description="Agents ranked by the best run of each on a board (backtest or paper), by "
                        "deflated Sharpe unless --metric says otherwise; under the table, the runs too short to "
                        "rank and what each needs. The embedded Redis under FARM_HOME is used unless FARM_REDIS "
                        "points elsewhere.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="examples:\n  farm leaderboard\n  farm leaderboard --metric sharpe --board paper -n 20"
                        "\n  farm leaderboard --lineage SmaCross   # its family's code versions")
    lb.add_argument("--metric", default="dsr", choices=["dsr", "sharpe", "total_return", "max_drawdown"])
    lb.add_argument("--board", default="backtest", choices=["backtest", "paper"])
    lb.add_argument("-n", type=int, default=10, help="how many agents (default 10)")
    lb.add_argument("--rebuild", action="store_true", help="record every finished run of the registry again first")
    lb.add_argument("--lineage", metavar="NAME", help="instead of the board: the code versions of a strategy family "
                    "(a family key, an agent id or a strategy name), with their trials and best Sharpe/DSR")
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
        top = leaderboard.top("dsr", 5, "backtest")
    except FarmError as exc:  # the leaderboard is a view: without it the run still stands
        print(f"leaderboard:       unavailable ({exc})")
        return
    if len(top):
        print("\nleaderboard (backtest, by deflated Sharpe):")
        print(leaderboard.cli_table(top))


def _sweep(args) -> int:
    from farmkit.errors import ParameterError
    from farmkit.research.search import constraint
    from farmkit.research.sweep import notebook_sweep
    grid = _named_values(args.grid, "--grid", "NAME=V1,V2,... (e.g. fast=5,10,20)")
    fixed = _named_values(args.parameter, "-p", "NAME=VALUE (e.g. days=10)")
    for name, value in grid.items():
        ranged = args.search == "tpe" and ".." in value and "," not in value
        grid[name] = value if ranged else [v.strip() for v in value.split(",") if v.strip()]
    if args.search == "grid" and (args.trials is not None or args.seed is not None or args.constraint):
        raise ParameterError("--trials, --seed and --constraint go with --search tpe; a grid runs every point")
    search = dict(search=args.search, n_trials=args.trials, seed=args.seed,
                  constraints=[constraint(text) for text in args.constraint] or None)
    res = notebook_sweep(args.notebook, grid, fixed=fixed, workers=args.workers, progress=not args.no_progress,
                         split=_split_value(args.split), warmup_bars=args.warmup_bars, **search)
    table = res.table
    shown = [c for c in [*grid, "status", "sharpe", "dsr", "total_return", "max_drawdown", "trades", "run_id"]
             if c in table.columns]
    print(f"sweep {res.sweep_id}: {len(table)} trials, {int((table.status == 'done').sum())} done")
    with pd.option_context("display.width", 160):
        print(table[shown].sort_values("sharpe", ascending=False, na_position="last").to_string(index=False)
              if "sharpe" in table else table[shown].to_string(index=False))
    if res.oos is not None and "oos_start" in res.oos:
        with pd.option_context("display.width", 160):
            print("\nchosen in sample, run out of sample:\n" + res.summary().to_string())
    print(res.overfitting())
    failed = table[table.status != "done"]
    for row in failed.itertuples():
        print(f"failed: {row.error}", file=sys.stderr)
    oos_errors = [] if res.oos is None else [e for e in res.oos.get("oos_error", []) if isinstance(e, str)]
    for error in oos_errors:
        print(f"out of sample: {error}", file=sys.stderr)
    return 0 if failed.empty and not oos_errors else 1


def _split_value(text: str | None):
    """--split as fk.sweep takes it: a fraction when it reads as a number, else a date."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _named_values(items: list[str], option: str, form: str) -> dict[str, str]:
    """NAME=VALUE arguments as a mapping; a name given twice is an error that names it."""
    from farmkit.errors import ParameterError
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ParameterError(f"{option} expects {form}, got {item!r}")
        if name in out:
            raise ParameterError(f"{option} {name} given twice ({option} {name}={out[name]} and {option} {item}); "
                                 f"give each parameter once, with all its values")
        out[name] = value.strip()
    return out


def _check_lookahead(args) -> int:
    from farmkit.research.lookahead import check_notebook
    runs = args.cuts + 1 + (1 if args.recursive else 0)
    print(f"Checking {args.notebook} for look-ahead ({runs} runs of the notebook)...", file=sys.stderr)
    report = check_notebook(args.notebook, dict(args.parameter), cuts=args.cuts, recursive=args.recursive)
    print(("OK: " if report.ok else "LOOK-AHEAD: ") + str(report))
    if not report.ok:
        table = report.differences.head(10)
        with pd.option_context("display.width", 160, "display.max_colwidth", 40):
            print(table.to_string(index=False))
    print(f"verdict written on run {report.full_run_id}")
    return 0 if report.ok else 1


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
    agent = promote(args.notebook, args.name, agents_dir=args.agents_dir, force=args.force, image=args.image,
                    allow_overfit=args.allow_overfit)
    gate = agent.manifest.get("overfitting") or {}
    if gate.get("overridden"):
        print(f"overfitting gate overridden (--allow-overfit; agent.yaml records it): {gate.get('reason')}",
              file=sys.stderr)
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
    if args.lineage:
        return _lineage(args.lineage)
    if args.rebuild:
        print(f"recorded {leaderboard.rebuild()} run(s) again", file=sys.stderr)
    print(leaderboard.cli_table(leaderboard.top(args.metric, args.n, args.board)))
    short = leaderboard.cli_short_table(leaderboard.too_short(args.board, args.n))
    if short:
        print("\n" + short)
    return 0


def _lineage(name: str) -> int:
    from farmkit.fmel.stores import open_store
    from farmkit.research import trials
    from farmkit.settings import Settings
    frame = trials.lineage(open_store(Settings.from_env().store), name)
    if frame.empty:
        print(f"no backtests of a family, agent or strategy named {name!r} in the run registry", file=sys.stderr)
        return 1
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(f"lineage of {name} (one row per code version, oldest first)")
        print(frame.to_string(index=False))
    return 0


def _runs(args) -> int:
    from farmkit import fmel
    frame = fmel.runs()
    if frame.empty:
        print("no runs yet: try `farm backtest notebooks/strategies/sma_crossover.ipynb`")
        return 0
    frame = frame.tail(args.n).reset_index(drop=True)
    # A list, not the Series: json_normalize keeps a Series' index (pandas 3), which would pair each
    # run with the metrics of another.
    metrics = pd.json_normalize([m if isinstance(m, dict) else {} for m in frame["metrics"]])
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
