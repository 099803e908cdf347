"""The research wing: what a quant runs on history, all on the run kernel.

``backtest`` (``fk.backtest``'s backtest side), ``sweep`` (parameter grids over trials), ``split``
(walk-forward and in/out-of-sample), ``lookahead`` (runs on truncated data), ``parity`` (a paper
run replayed as a backtest), ``trials`` (PSR, DSR over a strategy family) and ``notebooks`` (a notebook
run through papermill).
"""
