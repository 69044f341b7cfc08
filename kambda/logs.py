"""One log format for every kambda process (gateway, operator, agent), on stderr."""

from __future__ import annotations

import logging
import os
import sys


def configure(default_level: str = "INFO") -> None:
    logging.basicConfig(
        level=os.environ.get("KAMBDA_LOG_LEVEL", default_level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
