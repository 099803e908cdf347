"""The `farm` command: click commands over farmkit, plus the subcommands the services register.

``main(argv)`` returns the exit code: 0 done, 1 a failure the command reports (one ``error:`` line),
2 a usage error. ``farm --debug COMMAND`` (or ``FARM_DEBUG=1``) shows the traceback of a failure.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import click
import pandas as pd
from click.exceptions import NoArgsIsHelpError

from farmkit.commandgroup import FarmGroup, argparse_commands, print_error
from farmkit.errors import FarmError
from farmkit.version import __version__

_EPILOG = """\b
examples:
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
and tearsheets (runs/RUN_ID/).

\b
tab completion (bash; zsh: zsh_source, fish: fish_source), in ~/.bashrc:
  eval "$(_FARM_COMPLETE=bash_source farm)"
"""

COMMANDS = "farm.commands"   # entry-point group: a service's register(subparsers) adds its subcommands


def _examples(*lines: str) -> str:
    # \b keeps click from re-wrapping the example lines into one paragraph.
    return "\b\n" + ("example:" if len(lines) == 1 else "examples:") + "\n" + "\n".join(f"  {l}" for l in lines)


def _parameter_pairs():
    return click.option("-p", "--parameter", nargs=2, multiple=True, metavar="NAME VALUE",
                        help="override a parameter (repeatable); values take the type of the notebook's default")


@click.command(help="Run a notebook whose cell tagged 'parameters' holds the defaults. The executed notebook "
               "and the HTML tearsheet are written to FARM_HOME/runs/RUN_ID/.",
               short_help="run a strategy notebook as a backtest (papermill)",
               epilog=_examples("farm backtest notebooks/strategies/sma_crossover.ipynb -p fast 5 -p slow 50"))
@click.argument("notebook")
@_parameter_pairs()
@click.option("--no-progress", is_flag=True, help="no cell progress bar")
def backtest(**params) -> int:
    return _backtest(SimpleNamespace(**params))


@click.command(help="Every grid point is a full backtest of the notebook, registered under one sweep id; the "
               "trial table is printed and saved to FARM_HOME/sweeps/SWEEP_ID/trials.csv.",
               short_help="run a notebook over a parameter grid (one papermill run per trial)",
               epilog=_examples("farm sweep notebooks/strategies/sma_crossover.ipynb --grid fast=5,10,20 "
                                "--grid slow=50,100 --workers 2",
                                "farm sweep notebooks/strategies/sma_crossover.ipynb --search tpe --trials 40 "
                                "--seed 1 --grid fast=3..30 --grid slow=20..200 --constraint 'fast < slow' "
                                "-p days=10"))
@click.argument("notebook")
@click.option("--grid", multiple=True, required=True, metavar="NAME=V1,V2,...",
              help="a parameter and its values (repeatable, once per name); with --search tpe also NAME=LO..HI, "
              "a range")
@click.option("-p", "--parameter", multiple=True, metavar="NAME=VALUE",
              help="a parameter fixed in every trial (repeatable)")
@click.option("--search", type=click.Choice(["grid", "tpe"]), default="grid", show_default=True,
              help="grid: every combination; tpe: Optuna's TPE picks --trials points")
@click.option("--trials", type=int, metavar="N", help="trials of a --search tpe")
@click.option("--seed", type=int, help="seed of a --search tpe: the same trials in the same order")
@click.option("--constraint", multiple=True, metavar="EXPR",
              help="with --search tpe, only points where EXPR holds run, e.g. 'fast < slow' (repeatable)")
@click.option("--split", metavar="FRACTION|DATE",
              help="trials run on the bars before the split (in sample); the best is run on the rest, and only "
              "that run goes on the leaderboard (e.g. 0.7 or 2024-01-10)")
@click.option("--warmup-bars", type=int, default=0, metavar="N",
              help="with --split, bars before the out-of-sample start that warm its indicators up")
@click.option("--workers", type=int, default=1, show_default=True, help="trials run at once")
@click.option("--no-progress", is_flag=True, help="no progress bar")
def sweep(**params) -> int:
    return _sweep(SimpleNamespace(**params))


_LOOKAHEAD_HELP = """Run the whole notebook on all its data, then again with every fk.data source cut at N
timestamps, so that its cells see only the bars up to the cut. A bar whose decisions or tracked values in the
notebook's first fk.backtest change when later bars are removed used the future. The report names the first
such bar, the cell that most likely leaks (where the notebook's own Series and DataFrames first differ, and
known patterns: negative shift, centred rolling window, whole-series statistics, reversed cumulative
operations, start-labelled resample, backward fill) and the difference.

--recursive (the default) also runs it with the first quarter of the bars dropped and reports, apart from
look-ahead, values or decisions that depend on how much history came before, after a warm-up allowance of
max(100, 10 x the strategy's warm-up) bars.

The verdict goes on the notebook's run (column lookahead); a version that fails is withdrawn from the
leaderboards. Exits 1 on look-ahead."""


@click.command("check-lookahead", help=_LOOKAHEAD_HELP, short_help="check a strategy notebook for look-ahead bias",
               epilog=_examples("farm check-lookahead notebooks/strategies/sma_crossover.ipynb -p days 5 --cuts 3"))
@click.argument("notebook")
@_parameter_pairs()
@click.option("--cuts", type=int, default=3, show_default=True, help="cut timestamps, each a run of the notebook")
@click.option("--recursive/--no-recursive", default=True, show_default=True,
              help="also check whether decisions depend on the amount of warm-up data")
def check_lookahead(**params) -> int:
    return _check_lookahead(SimpleNamespace(**params))


@click.command(help="Copy the notebook to agents/NAME/agent.ipynb (outputs stripped) with an agent.yaml manifest, "
               "then run both and check that they take identical decisions.",
               short_help="turn a research notebook into a verified agent under agents/",
               epilog=_examples("farm promote notebooks/strategies/sma_crossover.ipynb --name sma-cross",
                                "farm promote --check agents/sma-cross"))
@click.argument("notebook")
@click.option("--name", help="agent name: lowercase letters, digits and dashes")
@click.option("--agents-dir", default="agents", show_default=True, help="where agents live")
@click.option("--force", is_flag=True, help="replace an existing agent of that name")
@click.option("--image", help="runner image to pin the agent to, ideally REPO/runner@sha256:DIGEST "
              "(default FARM_RUNNER_IMAGE)")
@click.option("--allow-overfit", is_flag=True,
              help="promote even when the overfitting gate refuses (DSR below 0.95 or PBO above 0.5 over the "
              "strategy's trials); agent.yaml records that it was overridden")
@click.option("--check", is_flag=True,
              help="re-verify an existing agent (NOTEBOOK is then the agent folder) against its agent.yaml "
              "(notebook, lock and installed packages, decisions, data fingerprint, warm-up, image); exits 1 "
              "if anything differs")
def promote(**params) -> int:
    return _promote(SimpleNamespace(**params))


@click.command(help="Rebuild the bars a paper run consumed from its FMEL, backtest the same strategy on them with "
               "the run's parameters and broker model, and compare decisions, orders, fills (size, price, "
               "commission) and positions bar by bar: identical, or the first divergence by field with both "
               "records side by side. Exits 1 on a divergence.",
               short_help="replay a paper run through a backtest and compare decisions and fills",
               epilog=_examples("farm parity paper-20261124-101500-ab12cd --strategy strategies.py:SmaCross",
                                "farm parity paper-20261124-101500-ab12cd --strategy mypackage.strategies:SmaCross",
                                "farm parity paper-20261124-101500-ab12cd --strategy "
                                "notebooks/strategies/sma_crossover.ipynb",
                                "farm parity paper-20261124-101500-ab12cd --strategy agents/sma-crossover"))
@click.argument("run_id")
@click.option("--strategy", required=True, metavar="SPEC",
              help="the strategy: FILE.py:CLASS, module:CLASS, NOTEBOOK.ipynb[:CLASS] or an agent folder")
def parity(**params) -> int:
    return _parity(SimpleNamespace(**params))


@click.command(help="Agents ranked by the best run of each on a board (backtest or paper), by deflated Sharpe "
               "unless --metric says otherwise; under the table, the runs too short to rank and what each needs. "
               "The embedded Redis under FARM_HOME is used unless FARM_REDIS points elsewhere.",
               short_help="the best agents by a metric (Redis leaderboards)",
               epilog=_examples("farm leaderboard", "farm leaderboard --metric sharpe --board paper -n 20",
                                "farm leaderboard --lineage SmaCross   # its family's code versions"))
@click.option("--metric", type=click.Choice(["dsr", "sharpe", "total_return", "max_drawdown"]), default="dsr",
              show_default=True)
@click.option("--board", type=click.Choice(["backtest", "paper"]), default="backtest", show_default=True)
@click.option("-n", type=int, default=10, show_default=True, help="how many agents")
@click.option("--rebuild", is_flag=True, help="record every finished run of the registry again first")
@click.option("--lineage", metavar="NAME", help="instead of the board: the code versions of a strategy family "
              "(a family key, an agent id or a strategy name), with their trials and best Sharpe/DSR")
def leaderboard(**params) -> int:
    return _leaderboard(SimpleNamespace(**params))


@click.command(help="The most recent runs of the run registry, with their metrics.",
               short_help="list recent runs with their metrics", epilog=_examples("farm runs -n 5"))
@click.option("-n", type=int, default=20, show_default=True, help="how many")
def runs(**params) -> int:
    return _runs(SimpleNamespace(**params))


@click.command(help="What the strategy saw, computed and decided at one bar of a run, from its FMEL.",
               short_help="explain one bar of a run from its FMEL",
               epilog=_examples("farm explain RUN_ID --bar 120"))
@click.argument("run_id")
@click.option("--bar", type=int, help="bar number (0-based)")
@click.option("--at", help="timestamp (UTC unless it says otherwise)")
def explain(**params) -> int:
    if (params["bar"] is None) == (params["at"] is None):
        raise click.UsageError("give one of --bar N or --at TIMESTAMP, e.g. farm explain RUN_ID --bar 120")
    return _explain(SimpleNamespace(**params))


def _service_registers() -> list:
    """``register(subparsers)`` of farm deploy, farm serve and of the services built on farmkit (the runner,
    the ingester), which come through the ``farm.commands`` entry points: the library never imports them."""
    from importlib.metadata import entry_points

    from farmkit.api import register as register_serve
    from farmkit.ops.deploy import register as register_deploy
    points = sorted(entry_points(group=COMMANDS), key=lambda p: p.name)
    return [register_deploy, register_serve, *(point.load() for point in points)]


def command() -> click.Group:
    """The `farm` click group, with every subcommand."""
    group = FarmGroup("farm", help="The Farm: notebook backtests with full market event logging.", epilog=_EPILOG,
                      context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
                      callback=lambda debug: None,
                      params=[click.Option(["--debug"], is_flag=True,
                                           help="show the traceback of a failure (also FARM_DEBUG=1)")])
    group = click.version_option(__version__, "--version", prog_name="farm", message="%(prog)s %(version)s")(group)
    for cmd in (backtest, sweep, check_lookahead, promote, parity, leaderboard, runs, explain,
                *argparse_commands(*_service_registers())):
        group.add_command(cmd)
    return group


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
    _print_leaderboard(result.run_id)
    return 0


def _print_leaderboard(run_id: str | None = None) -> None:
    from farmkit import leaderboard
    try:
        top = leaderboard.top("dsr", 5, "backtest")
        short = leaderboard.too_short("backtest") if run_id is not None else None
    except FarmError as exc:  # the leaderboard is a view: without it the run still stands
        print(f"leaderboard:       unavailable ({exc})")
        return
    if len(top):
        print("\nleaderboard (backtest, by deflated Sharpe):")
        print(leaderboard.cli_table(top))
    waiting = short[short.run_id == run_id] if short is not None and len(short) else None
    if waiting is not None and len(waiting):   # on the board, not ranked yet: say what it needs
        print(f"leaderboard:       not ranked yet, {waiting.iloc[0].needs} (farm leaderboard lists it under the board)")


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
        raise click.UsageError("--name NAME is required (the agent's name), e.g. "
                               f"farm promote {args.notebook} --name my-agent")
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
    """``farm ARGS``; returns the exit code (0 done, 1 the command failed, 2 a usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    group = command()
    try:
        code = group.main(args=argv, prog_name="farm", standalone_mode=False)
    except NoArgsIsHelpError as exc:   # `farm` alone: the help, as a usage error
        click.echo(exc.ctx.get_help())
        return exc.exit_code
    except click.UsageError as exc:
        hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        print_error(exc.format_message() + hint)
        return exc.exit_code
    except click.ClickException as exc:
        print_error(exc.format_message())
        return exc.exit_code
    except click.Abort:
        print_error("aborted")
        return 130
    except SystemExit as exc:       # shell completion (_FARM_COMPLETE) ends with sys.exit
        return exc.code if isinstance(exc.code, int) else 0
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
