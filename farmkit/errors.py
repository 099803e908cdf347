"""Errors a user can act on: each says what went wrong and what to do."""

from __future__ import annotations


class FarmError(Exception):
    """Base class of every error farmkit raises on purpose."""


class DataError(FarmError, ValueError):
    """Input market data is malformed. Names the source, the row and the column where it can."""

    def __init__(self, message: str, *, source: str | None = None, row: int | None = None,
                 column: str | None = None):
        self.source, self.row, self.column = source, row, column
        where = ", ".join(part for part in (
            source or "",
            f"row {row}" if row is not None else "",
            f"column {column!r}" if column else "",
        ) if part)
        super().__init__(f"{where}: {message}" if where else message)


class ParameterError(FarmError, ValueError):
    """A strategy or notebook parameter is unknown or has the wrong type."""


class ShadowedParameter(UserWarning):
    """A run's option was given under a name the strategy also uses for a parameter: the value went
    to the run, and the strategy keeps its default (``params={...}`` sets the strategy's)."""


class StrategyError(FarmError, RuntimeError):
    """The strategy raised while running. Carries the run id, the bar and the traceback."""

    def __init__(self, message: str, *, run_id: str, bar_number: int | None, timestamp=None,
                 traceback_text: str = ""):
        self.run_id, self.bar_number, self.timestamp = run_id, bar_number, timestamp
        self.traceback_text = traceback_text
        super().__init__(message)


class ConfigError(FarmError, ValueError):
    """Settings (FARM_* variables, URLs) are invalid."""


class MissingCredentials(FarmError, RuntimeError):
    """An API key that a call needs is not set."""


class AlpacaAPIError(FarmError, RuntimeError):
    """Alpaca answered a request with an error, or could not be reached. Carries the HTTP status."""

    def __init__(self, message: str, *, status: int | None = None, api_message: str | None = None):
        self.status, self.api_message = status, api_message
        super().__init__(message)
