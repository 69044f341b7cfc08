"""The gateway's settings, one dataclass, filled from the command line (`kambda run`, `kambda gateway`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "kambda"


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8080
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 9090  # 0: any free port
    data_dir: Path = field(default_factory=default_data_dir)
    namespace: str = "default"
    region: str = "us-east-1"
    account_id: str = "000000000000"
    max_concurrency: int = 1000  # gateway-wide, like an account's concurrency limit
    queue_timeout: float = 120.0  # a sync request waits this long for an instance before a 502
    max_sync_payload: int = 6 * 1024 * 1024
    scaler_tick: float = 1.0
    use_cgroups: bool = True
