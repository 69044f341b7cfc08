"""The `kambda` command: run the local platform, invoke functions, run an agent."""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from kambda.gateway.main import run_local
    from kambda.gateway.settings import GatewaySettings

    settings = GatewaySettings()
    settings = replace(
        settings,
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        data_dir=Path(args.data_dir) if args.data_dir else settings.data_dir,
        max_concurrency=args.max_concurrency,
        use_cgroups=not args.no_cgroups,
        queue_backend=args.queue,
        nats_url=args.nats_url,
        retry_base_delay=args.retry_base_delay,
        throttle_base_delay=args.throttle_base_delay,
        lease_seconds=args.lease_seconds,
        max_async_payload=args.max_async_payload,
    )
    return run_local(Path(args.directory), settings)


def _invoke(args: argparse.Namespace) -> int:
    payload = args.payload or ""
    if payload.startswith("@"):
        payload = Path(payload[1:]).read_text()
    url = f"{args.endpoint.rstrip('/')}/2015-03-31/functions/{args.name}/invocations"
    if args.qualifier:
        url += f"?Qualifier={args.qualifier}"
    headers = {"X-Amz-Log-Type": "Tail" if args.log_tail else "None"}
    request = urllib.request.Request(url, data=payload.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            body = response.read()
            if args.log_tail and response.headers.get("X-Amz-Log-Result"):
                sys.stderr.write(base64.b64decode(response.headers["X-Amz-Log-Result"]).decode(errors="replace"))
            sys.stdout.write(body.decode(errors="replace") + "\n")
            return 1 if response.headers.get("X-Amz-Function-Error") else 0
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            message = json.loads(body)
        except ValueError:
            message = body.decode(errors="replace")
        print(f"{err.headers.get('x-amzn-ErrorType', err.code)}: {message}", file=sys.stderr)
        return 2
    except urllib.error.URLError as err:
        print(f"cannot reach the gateway at {args.endpoint}: {err.reason}", file=sys.stderr)
        return 2


def _agent(args: argparse.Namespace) -> int:
    from kambda.runtime.agent.main import main as agent_main

    return agent_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kambda", description="AWS Lambda, self-hosted.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the platform locally, serving the Function manifests in DIR")
    run.add_argument("directory", nargs="?", default=".", metavar="DIR")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8080)
    run.add_argument("--grpc-port", type=int, default=9090, help="runtime interface port (0: any free port)")
    run.add_argument("--data-dir", help="code cache and queues (default ~/.local/share/kambda)")
    run.add_argument("--max-concurrency", type=int, default=1000, help="gateway-wide concurrency limit")
    run.add_argument("--no-cgroups", action="store_true", help="do not put runtimes into memory cgroups")
    run.add_argument("--queue", choices=("sqlite", "nats"), default="sqlite", help="async event queue backend")
    run.add_argument("--nats-url", default="nats://127.0.0.1:4222", help="NATS server (with --queue nats)")
    run.add_argument("--retry-base-delay", type=float, default=60.0, help="seconds before the 1st async retry")
    run.add_argument("--throttle-base-delay", type=float, default=1.0, help="first backoff after a throttle")
    run.add_argument("--lease-seconds", type=float, default=30.0, help="NATS: redelivery delay of unacked events")
    run.add_argument("--max-async-payload", type=int, default=1024 * 1024, help="Event payload limit in bytes")
    run.set_defaults(func=_run)

    invoke = sub.add_parser("invoke", help="invoke a function and print its result")
    invoke.add_argument("name")
    invoke.add_argument("--payload", help="JSON, or @file")
    invoke.add_argument("--qualifier")
    invoke.add_argument("--log-tail", action="store_true", help="print the invocation's log tail to stderr")
    invoke.add_argument("--endpoint", default="http://127.0.0.1:8080")
    invoke.add_argument("--timeout", type=float, default=905)
    invoke.set_defaults(func=_invoke)

    agent = sub.add_parser("agent", help="run a sandbox agent (used inside function pods)", add_help=False)
    agent.add_argument("rest", nargs=argparse.REMAINDER)
    agent.set_defaults(func=_agent)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
