"""Lambda's advanced logging controls (a function's LoggingConfig), defined once for the whole platform (pure).

`spec.logging` is parsed and validated by `specs.py`; the agent writes its own lines in the chosen format
(`runtime/agent/reports.py`) and filters the runtime's output by level (`runtime/agent/logs.py`); the runtime
learns the format and the application level from two variables (`runtime_env`), which awslambdaric and
aws-lambda-ric read: with JSON, their logging methods (Python's `logging`, Node's `console.*`) write one JSON
record a line and drop records below the level themselves.
"""

from __future__ import annotations

TEXT, JSON = "Text", "JSON"
FORMATS = (TEXT, JSON)  # Lambda's LogFormat values, spelt as the API spells them
# Most detailed first: a level keeps itself and everything after it.
APPLICATION_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
SYSTEM_LEVELS = ("DEBUG", "INFO", "WARN")
DEFAULT_LEVEL = "INFO"  # both levels' default once the format is JSON (Lambda's)


def severity(level: str) -> int:
    """A level's place in APPLICATION_LEVELS (SYSTEM_LEVELS are a part of it, in the same order)."""
    return APPLICATION_LEVELS.index(level)


def keeps(threshold: str | None, level: str) -> bool:
    """Whether a record at `level` passes a filter set to `threshold` (None: Lambda's default, INFO)."""
    return severity(level) >= severity(threshold or DEFAULT_LEVEL)


def runtime_env(log_format: str, application_log_level: str | None) -> dict[str, str]:
    """The variables Lambda gives a runtime for its LoggingConfig. AWS_LAMBDA_LOG_LEVEL only with JSON: levels
    exist only there, and both clients would filter even Text output by it if it were set. Neither is among
    Lambda's reserved variables, so they go before a function's own, which may set them."""
    if log_format != JSON:
        return {"AWS_LAMBDA_LOG_FORMAT": TEXT}
    return {"AWS_LAMBDA_LOG_FORMAT": JSON, "AWS_LAMBDA_LOG_LEVEL": application_log_level or DEFAULT_LEVEL}
