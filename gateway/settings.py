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
    max_async_payload: int = 1024 * 1024  # Lambda's current Event limit (it was 256 KiB until 2025)
    # Asynchronous invocations
    queue_backend: str = "sqlite"  # or "nats"
    nats_url: str = "nats://127.0.0.1:4222"
    sqlite_synchronous: str = "NORMAL"  # FULL: survive power loss too, one fsync per commit
    retry_base_delay: float = 60.0  # Lambda: 1 min before the 1st retry, 2 min before the 2nd
    throttle_base_delay: float = 1.0  # doubling up to 5 min for throttles and platform errors
    lease_seconds: float = 30.0  # JetStream: an event a dead gateway held is redelivered after this
    max_async_inflight: int = 64  # events being delivered at once by this gateway
    status_retention: float = 24 * 3600.0  # how long finished invocations' statuses and results are kept
    status_max_bytes: int = 256 * 1024 * 1024  # and how much of them at most (the oldest are dropped first)
    scaler_tick: float = 1.0
    use_cgroups: bool = True
    # Connections (gateway/connections.py): how long each phase of a client connection may last, and how many
    header_timeout: float = 15.0  # a request head not complete this long after its first byte: 408
    body_timeout: float = 60.0  # a request body not received this long after its head: 408
    idle_timeout: float = 75.0  # a keep-alive connection idle this long is closed
    max_connections: int = 10_000  # beyond it the longest-idle keep-alive one is closed, else 503 (Retry-After: 1)
    shutdown_grace: float = 20.0  # on SIGTERM, in-flight requests get this long to finish
    isolation: str = "auto"  # local backend: sandboxes under bubblewrap with a uid each (auto | bwrap | none)
    image_runtimes: tuple[str, ...] = ()  # Kubernetes: the runtimes with an image of their own (as the operator's)
    # API authentication (gateway/auth.py): keys (SigV4 with the data directory's access keys), none (anonymous,
    # announced at start), auto (keys if there is any access key at start, else none).
    auth: str = "auto"
    keys_secret: str = ""  # Kubernetes: the access-keys Secret, NAMESPACE/NAME
    # Several replicas (Kubernetes, `leases.py`): functions are owned through Leases "<prefix>-*" in a namespace
    # ("NAMESPACE/PREFIX"; "" = one replica, which owns everything), shared out in `replica_buckets` buckets.
    replica_leases: str = ""
    replica_buckets: int = 8
    replica_lease_seconds: float = 5.0
    advertise_host: str = ""  # where the other replicas and the agents reach this one (a pod's IP)
    identity: str = ""  # this replica's holder name in the Leases (a pod's name)
