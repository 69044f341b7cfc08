"""The `kambda` command: run the local platform, deploy and invoke functions, run an agent."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING

from kambda import signing

if TYPE_CHECKING:
    from kambda.deploying import Gateway
    from kambda.gateway.settings import GatewaySettings
    from kambda.secretkeys import SecretKeyStore


def _settings(args: argparse.Namespace) -> GatewaySettings:
    from kambda.gateway.settings import GatewaySettings

    settings = GatewaySettings()
    return replace(
        settings,
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        grpc_host=args.grpc_host,
        data_dir=Path(args.data_dir) if args.data_dir else settings.data_dir,
        max_concurrency=args.max_concurrency,
        use_cgroups=not args.no_cgroups,
        isolation=args.isolation,
        queue_backend=args.queue,
        nats_url=args.nats_url,
        retry_base_delay=args.retry_base_delay,
        throttle_base_delay=args.throttle_base_delay,
        lease_seconds=args.lease_seconds,
        max_async_payload=args.max_async_payload,
        namespace=args.namespace,
        queue_timeout=args.queue_timeout,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        idle_timeout=args.idle_timeout,
        max_connections=args.max_connections,
        shutdown_grace=args.shutdown_grace,
        status_retention=args.status_retention_hours * 3600,
        status_max_bytes=int(args.status_max_mb * 1024 * 1024),
        image_runtimes=tuple(runtime for runtime, _ in map(_runtime_image, args.runtime_image_for or ())),
        auth=args.auth,
        keys_secret=args.keys_secret,
        replica_leases=getattr(args, "replica_leases", ""),
        replica_buckets=getattr(args, "replica_buckets", 8),
        replica_lease_seconds=getattr(args, "replica_lease_seconds", 5.0),
        advertise_host=getattr(args, "advertise_host", ""),
        identity=getattr(args, "identity", "") or os.environ.get("HOSTNAME", ""),
    )


def _run(args: argparse.Namespace) -> int:
    from kambda import kubeconfig
    from kambda.gateway.main import run_local

    key = kubeconfig.signing_key(args.signing_key_file) if args.signing_key_file else None
    return run_local(Path(args.directory), _settings(args), key)


def _invoke(args: argparse.Namespace) -> int:
    payload = args.payload or ""
    if payload.startswith("@"):
        payload = Path(payload[1:]).read_text()
    url = f"{args.endpoint.rstrip('/')}/2015-03-31/functions/{args.name}/invocations"
    if args.qualifier:
        url += f"?Qualifier={args.qualifier}"
    headers = {"X-Amz-Log-Type": "Tail" if args.log_tail else "None"}
    headers = signing.headers("POST", url, headers, payload.encode())
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


def _deploy(args: argparse.Namespace) -> int:
    import asyncio
    import tempfile

    from kambda import deploying, packages

    try:
        environment = dict(_key_value(item) for item in args.env) if args.env is not None else None
        layers = tuple(args.layer) if args.layer is not None else None
        options = deploying.Options(args.runtime, args.handler, args.memory, args.timeout, environment, layers)
        with tempfile.TemporaryFile() as scratch:
            zipped, sha, size = _package(Path(args.source), scratch)
            gateway = deploying.Gateway(args.endpoint)
            info = gateway.info()
            namespace = args.namespace or str(info.get("namespace") or "default")
            if args.runtime is not None:
                deploying.check_runtime(info, args.runtime)  # before the upload: a runtime it lacks is refused now
            _store(gateway, zipped, sha, size)
        if info["backend"] == "kubernetes":
            action, _ = asyncio.run(deploying.deploy_kubernetes(args.kubeconfig, args.name, namespace, sha, options))
            print(f"Function {namespace}/{args.name} {action}: the operator publishes its version "
                  f"(kubectl get fn {args.name} -n {namespace})", file=sys.stderr)  # fmt: skip
            version = ""
        else:
            deployed = deploying.deploy_local(gateway, args.name, namespace, sha, options)
            version = f" Version={deployed['Version']}"
    except deploying.DeployFailed as exc:
        print(f"kambda deploy: {exc}", file=sys.stderr)
        return 2
    print(f"FunctionName={args.name}{version} CodeSha256={packages.code_sha256(sha)} CodeSize={size}")
    return 0


def _package(source: Path, scratch: IO[bytes]) -> tuple[IO[bytes], str, int]:
    """`source` packaged and checked (zipped into `scratch` if it is a directory): (zip, sha256 hex, zipped size).
    Done before the gateway is asked anything, so that a bad package is named without a round trip."""
    from kambda import deploying, packages

    zipped = deploying.package(source, scratch)
    size = zipped.seek(0, 2)
    if size > packages.MAX_ZIPPED:
        raise deploying.DeployFailed(
            f"the package is {size} bytes zipped; the upload limit is {packages.MAX_ZIPPED} (Lambda's)"
        )
    zipped.seek(0)
    return zipped, packages.sha256_hex(zipped), size


def _store(gateway: Gateway, zipped: IO[bytes], sha: str, size: int) -> None:
    """Put the package in the gateway's code store, unless it is there already."""
    from kambda import deploying

    if gateway.has(sha):
        print(f"package {sha} is already stored", file=sys.stderr)
    else:
        zipped.seek(0)
        gateway.upload(zipped, sha, size, deploying.progress_line(size))


def _layer(args: argparse.Namespace) -> int:
    import tempfile

    from kambda import deploying, packages

    try:
        with tempfile.TemporaryFile() as scratch:
            zipped, sha, size = _package(Path(args.source), scratch)
            _store(deploying.Gateway(args.endpoint), zipped, sha, size)
    except deploying.DeployFailed as exc:
        print(f"kambda layer: {exc}", file=sys.stderr)
        return 2
    print(f"Sha256={sha} CodeSha256={packages.code_sha256(sha)} CodeSize={size}")
    return 0


def _runtime_image(item: str) -> tuple[str, str]:
    from kambda.specs import RUNTIMES

    runtime, sep, image = item.partition("=")
    if not sep or not runtime or not image:
        raise SystemExit(f"kambda: --runtime-image-for {item!r}: expected RUNTIME=IMAGE")
    if runtime not in RUNTIMES:
        raise SystemExit(f"kambda: --runtime-image-for {item!r}: {runtime} is none of {', '.join(RUNTIMES)}")
    return runtime, image


def _runtime_image_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """The same option for the operator (which uses the images) and the gateway (which lists the runtimes), so the
    chart gives both one list."""
    parser.add_argument("--runtime-image-for", action="append", metavar="RUNTIME=IMAGE", help=help_text)


def _key_value(item: str) -> tuple[str, str]:
    from kambda.deploying import DeployFailed

    key, sep, value = item.partition("=")
    if not sep or not key:
        raise DeployFailed(f"--env {item!r}: expected KEY=VALUE")
    return key, value


def _call(endpoint: str, method: str, path: str) -> tuple[int, object]:
    url, data = endpoint.rstrip("/") + path, b"" if method == "POST" else None
    request = urllib.request.Request(url, method=method, data=data, headers=signing.headers(method, url, None, data))
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


def _dlq(args: argparse.Namespace) -> int:
    from urllib.parse import quote, urlencode

    if args.action == "ls":
        query = {"MaxItems": str(args.limit)}
        if args.function:
            query["FunctionName"] = args.function
        code, body = _call(args.endpoint, "GET", "/v1/dead-letters?" + urlencode(query))
        if code == 200 and isinstance(body, dict):
            for dead in body["DeadLetters"]:
                print(f"{dead['RequestId']}\t{dead['FunctionName']}\t{dead['Condition']}\t"
                      f"attempts={dead['Attempts']}\t{dead.get('ErrorType') or ''}")  # fmt: skip
            if body.get("NextMarker"):
                print(f"(more: --limit or the API's Marker={body['NextMarker']})", file=sys.stderr)
            return 0
    elif args.action == "redrive" and args.all:
        filters = urlencode({"FunctionName": args.function}) if args.function else ""
        code, body = _call(args.endpoint, "POST", "/v1/dead-letters/redrive?" + filters)
    elif not args.request_id:
        print(f"kambda dlq {args.action}: a request id is needed", file=sys.stderr)
        return 2
    else:
        path = f"/v1/dead-letters/{quote(args.request_id)}"
        method, suffix = {"show": ("GET", ""), "rm": ("DELETE", ""), "redrive": ("POST", "/redrive")}[args.action]
        code, body = _call(args.endpoint, method, path + suffix)
    if code >= 400:
        print(f"error {code}: {body}", file=sys.stderr)
        return 2
    if body is not None:
        print(json.dumps(body, indent=2))
    return 0


def _status(args: argparse.Namespace) -> int:
    code, body = _call(args.endpoint, "GET", f"/v1/invocations/{args.request_id}")
    if code >= 400:
        print(f"error {code}: {body}", file=sys.stderr)
        return 2
    print(json.dumps(body, indent=2))
    return 0


def _keys(args: argparse.Namespace) -> int:
    """Access keys: the local backend's (the data directory's access-keys.json; a running gateway re-reads it) or,
    with --kubernetes, Secrets in the platform's namespace (the gateways watch them)."""
    from kambda import accesskeys, policies
    from kambda.gateway.settings import default_data_dir

    store: accesskeys.KeyFile | SecretKeyStore
    if args.kubernetes:
        from kambda.secretkeys import SecretKeyStore

        store = SecretKeyStore(args.kubernetes)
    else:
        store = accesskeys.KeyFile.in_data_dir(Path(args.data_dir) if args.data_dir else default_data_dir())
    try:
        if args.action == "create":
            if args.policy is None:
                document: object = accesskeys.ALLOW_ALL
            else:
                document = json.loads(Path(args.policy).read_text())
            policies.parse(document)  # refused here, with the problem named, rather than at the first request
            key = store.create(args.name or "", (document,))  # type: ignore[arg-type]
            print(json.dumps({"AccessKey": {"AccessKeyId": key.access_key_id,
                                            "SecretAccessKey": key.secret_access_key, "Status": "Active"}},
                             indent=2))  # fmt: skip
        elif args.action == "ls":
            print(json.dumps({"AccessKeys": [k.public() for k in store.keys().values()]}, indent=2))
        else:
            if not args.access_key_id:
                raise accesskeys.KeyStoreError("kambda keys rm ACCESS_KEY_ID")
            store.remove(args.access_key_id)
    except (accesskeys.KeyStoreError, policies.PolicyError, OSError, ValueError) as exc:
        print(f"kambda keys: {exc}", file=sys.stderr)
        return 2
    return 0


def _runtimes(args: argparse.Namespace) -> int:
    """What an installation runs: this host's local backend (probed, no gateway needed), or a gateway's."""
    if args.endpoint is None:
        from kambda import hostruntimes

        survey = hostruntimes.python_survey()
        node = hostruntimes.node_version()
        for runtime in hostruntimes.offered():
            python = survey.offered.get(runtime)
            how = python.interpreter if python else f"node {node}" if runtime.startswith("nodejs") else "bootstrap"
            print(f"{runtime}\t{how}")
        for interpreter, reason in survey.unusable.items():
            print(f"# not offered: {interpreter}: {reason}", file=sys.stderr)
        return 0
    try:
        code, body = _call(args.endpoint, "GET", "/kambda/v1/info")
    except OSError as exc:
        print(f"kambda runtimes: {args.endpoint}: {exc}", file=sys.stderr)
        return 2
    if code != 200 or not isinstance(body, dict) or not isinstance(body.get("runtimes"), list):
        print(f"kambda runtimes: {args.endpoint} does not look like a kambda gateway ({code})", file=sys.stderr)
        return 2
    for runtime in body["runtimes"]:
        print(f"{runtime}\t{body.get('backend')}")
    return 0


def _operator(args: argparse.Namespace) -> int:
    from kambda import kubeconfig, logs
    from kambda.operator import main as operator_main
    from kambda.operator.resources import Settings

    logs.configure()
    settings = Settings(
        runtime_image=args.runtime_image,
        runtime_images=dict(_runtime_image(item) for item in args.runtime_image_for or ()),
        gateway_address=args.gateway_address,
        signing_key=kubeconfig.signing_key(args.signing_key_file),
        image_pull_policy=args.image_pull_policy,
        gateway_selector={"app.kubernetes.io/name": "kambda", "app.kubernetes.io/component": "gateway"},
        code_store=args.code_store_url,
        warm_pool_size=args.warm_pool_size,
    )
    return operator_main.run(
        namespace=args.namespace, settings=settings, liveness=args.liveness, gateway_service=args.gateway_service
    )


def _gateway(args: argparse.Namespace) -> int:
    if args.backend == "local":
        return _run(args)
    from kambda import kubeconfig
    from kambda.gateway.main import run_kubernetes

    return run_kubernetes(_settings(args), kubeconfig.signing_key(args.signing_key_file))


def _agent(args: argparse.Namespace) -> int:
    from kambda.runtime.agent.main import main as agent_main

    return agent_main(args.rest)


def _gateway_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--grpc-port", type=int, default=9090, help="runtime interface port (0: any free port)")
    parser.add_argument("--grpc-host", default="127.0.0.1", help="runtime interface address (0.0.0.0 in a pod)")
    parser.add_argument("--data-dir", help="code cache and queues (default ~/.local/share/kambda)")
    parser.add_argument("--max-concurrency", type=int, default=1000, help="gateway-wide concurrency limit")
    parser.add_argument("--no-cgroups", action="store_true", help="do not put runtimes into memory cgroups")
    parser.add_argument("--isolation", choices=("auto", "bwrap", "none"), default="auto",
                        help="local sandboxes: bubblewrap, a uid each as root (auto: if installed)")  # fmt: skip
    parser.add_argument("--queue", choices=("sqlite", "nats"), default="sqlite", help="async event queue backend")
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222", help="NATS server (with --queue nats)")
    parser.add_argument("--retry-base-delay", type=float, default=60.0, help="seconds before the 1st async retry")
    parser.add_argument("--throttle-base-delay", type=float, default=1.0, help="first backoff after a throttle")
    parser.add_argument("--lease-seconds", type=float, default=30.0, help="NATS: redelivery delay of unacked events")
    parser.add_argument("--max-async-payload", type=int, default=1024 * 1024, help="Event payload limit (bytes)")
    parser.add_argument("--namespace", default="default", help="the namespace whose functions are served by name")
    parser.add_argument("--queue-timeout", type=float, default=120.0, help="how long a request waits for an instance")
    parser.add_argument("--header-timeout", type=float, default=15.0,
                        help="seconds for a request head to arrive (then 408); silent connections close")  # fmt: skip
    parser.add_argument("--body-timeout", type=float, default=60.0,
                        help="seconds for a request body to arrive (then 408), or a response to be read")  # fmt: skip
    parser.add_argument("--idle-timeout", type=float, default=75.0, help="seconds an idle keep-alive connection lives")
    parser.add_argument("--max-connections", type=int, default=10_000,
                        help="open client connections at most (kept below the open-file limit)")  # fmt: skip
    parser.add_argument("--shutdown-grace", type=float, default=20.0,
                        help="seconds in-flight requests get to finish on SIGTERM")  # fmt: skip
    parser.add_argument("--status-retention-hours", type=float, default=24.0,
                        help="how long statuses of finished async invocations are kept")  # fmt: skip
    parser.add_argument("--status-max-mb", type=float, default=256.0,
                        help="at most this much of them (MiB); the oldest are dropped first")  # fmt: skip
    _runtime_image_argument(parser, "Kubernetes: a runtime the operator has an image for (it lists the runtimes)")
    parser.add_argument("--auth", choices=("auto", "keys", "none"), default="auto",
                        help="SigV4 with `kambda keys` (keys), anonymous (none), keys if any exist (auto)")  # fmt: skip
    parser.add_argument("--keys-secret", default="", metavar="NAMESPACE/NAME",
                        help="Kubernetes: the Secret whose entries are the access keys (the chart's)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kambda", description="AWS Lambda, self-hosted.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the platform locally, serving the Function manifests in DIR")
    run.add_argument("directory", nargs="?", default=".", metavar="DIR")
    run.add_argument("--signing-key-file", help="key of the runtime credentials (default: a new one per start)")
    _gateway_arguments(run)
    run.set_defaults(func=_run)

    gateway = sub.add_parser("gateway", help="run the gateway (--backend kubernetes: against the current cluster)")
    gateway.add_argument("--backend", choices=("local", "kubernetes"), default="kubernetes")
    gateway.add_argument("--directory", default=".", help="manifests, with --backend local")
    gateway.add_argument("--signing-key-file", help="the key shared with the operator (else $KAMBDA_SIGNING_KEY)")
    gateway.add_argument("--replica-leases", default="", metavar="NAMESPACE/PREFIX",
                         help="several replicas: share functions through the Leases PREFIX-* in NAMESPACE")  # fmt: skip
    gateway.add_argument("--replica-buckets", type=int, default=8,
                         help="functions are shared among replicas in this many buckets (one Lease each)")  # fmt: skip
    gateway.add_argument("--replica-lease-seconds", type=float, default=5.0,
                         help="a dead replica's functions move to the others after this")  # fmt: skip
    gateway.add_argument("--advertise-host", default="",
                         help="the address other replicas and agents reach this one at (a pod: its IP)")  # fmt: skip
    gateway.add_argument("--identity", default="", help="this replica's name in the Leases (default $HOSTNAME)")
    _gateway_arguments(gateway)
    gateway.set_defaults(func=_gateway)

    invoke = sub.add_parser("invoke", help="invoke a function and print its result")
    invoke.add_argument("name")
    invoke.add_argument("--payload", help="JSON, or @file")
    invoke.add_argument("--qualifier")
    invoke.add_argument("--log-tail", action="store_true", help="print the invocation's log tail to stderr")
    invoke.add_argument("--endpoint", default="http://127.0.0.1:8080")
    invoke.add_argument("--timeout", type=float, default=905)
    invoke.set_defaults(func=_invoke)

    deploy = sub.add_parser("deploy", help="package code, upload it to the gateway, create or update the Function")
    deploy.add_argument("source", metavar="DIR|ZIP", help="a directory (zipped deterministically) or a zip file")
    deploy.add_argument("--name", required=True, help="the function's name")
    deploy.add_argument("--runtime", help="e.g. python3.13 (python3.11 is the default for a new function) or provided")
    deploy.add_argument("--handler", help="module.function (app.handler for a new Python function)")
    deploy.add_argument("--memory", type=int, help="memory in MB (a new function: 128)")
    deploy.add_argument("--timeout", type=int, help="timeout in seconds (a new function: 3)")
    deploy.add_argument("--env", action="append", metavar="KEY=VALUE",
                        help="an environment variable (given at all, they replace the environment)")  # fmt: skip
    deploy.add_argument("--endpoint", default="http://127.0.0.1:8080")
    deploy.add_argument("--namespace", help="default: the namespace the gateway serves")
    deploy.add_argument("--kubeconfig", help="Kubernetes backend: whose Function is written (default $KUBECONFIG, "
                        "~/.kube/config)")  # fmt: skip
    deploy.add_argument("--layer", action="append", metavar="SHA256",
                        help="a layer uploaded by `kambda layer` (repeat, in order; given at all, they replace the "
                        "function's layers)")  # fmt: skip
    deploy.set_defaults(func=_deploy)

    layer = sub.add_parser("layer", help="package a layer (python/, bin/, lib/, bootstrap ...) and upload it")
    layer.add_argument("source", metavar="DIR|ZIP")
    layer.add_argument("--endpoint", default="http://127.0.0.1:8080")
    layer.set_defaults(func=_layer)

    dlq = sub.add_parser("dlq", help="inspect and redrive the dead-letter queue of asynchronous invocations")
    dlq.add_argument("action", choices=("ls", "show", "rm", "redrive"))
    dlq.add_argument("request_id", nargs="?")
    dlq.add_argument("--function", help="only this function's dead letters (ls, redrive --all)")
    dlq.add_argument("--all", action="store_true", help="redrive every dead letter (of --function)")
    dlq.add_argument("--limit", type=int, default=100)
    dlq.add_argument("--endpoint", default="http://127.0.0.1:8080")
    dlq.set_defaults(func=_dlq)

    status = sub.add_parser("status", help="the state of an asynchronous invocation")
    status.add_argument("request_id")
    status.add_argument("--endpoint", default="http://127.0.0.1:8080")
    status.set_defaults(func=_status)

    keys = sub.add_parser("keys", help="access keys (SigV4), each with an IAM-style policy: local or --kubernetes")
    keys.add_argument("action", choices=("create", "ls", "rm"))
    keys.add_argument("access_key_id", nargs="?", help="rm: the key to remove")
    keys.add_argument("--name", help="create: a name for the key (who holds it)")
    keys.add_argument("--policy", metavar="FILE", help="create: an IAM policy document (default: allow lambda:*)")
    keys.add_argument("--data-dir", help="the gateway's data directory (default ~/.local/share/kambda)")
    keys.add_argument("--kubernetes", metavar="NAMESPACE",
                      help="keys of the platform installed in NAMESPACE (Secrets, with your kubeconfig)")  # fmt: skip
    keys.set_defaults(func=_keys)

    from kambda import apiclient

    apiclient.add_parsers(sub)

    runtimes = sub.add_parser("runtimes", help="the runtimes this host (or the gateway at --endpoint) runs")
    runtimes.add_argument("--endpoint", help="ask this gateway (e.g. a cluster's) instead of probing this host")
    runtimes.set_defaults(func=_runtimes)

    op = sub.add_parser("operator", help="run the Kubernetes operator (Function and Alias resources)")
    op.add_argument("--namespace", help="watch one namespace (default: all)")
    op.add_argument("--runtime-image", default="localhost/kambda-runtime:0.1.0", help="image of function pods")
    _runtime_image_argument(op, "the image of another runtime's pods, e.g. nodejs20.x=localhost/kambda-runtime-nodejs")
    op.add_argument("--image-pull-policy", default="IfNotPresent")
    op.add_argument("--gateway-address", default="kambda-gateway.kambda-system.svc:9090",
                    help="host:port where function pods reach the gateway's runtime interface")  # fmt: skip
    op.add_argument("--code-store-url", help="where function pods fetch packages, e.g. http://10.96.0.10:8080")
    op.add_argument("--gateway-service", metavar="NAMESPACE/NAME",
                    help="take both addresses from the gateway's Service (its ClusterIP) instead")  # fmt: skip
    op.add_argument("--signing-key-file", help="the key shared with the gateway (else $KAMBDA_SIGNING_KEY)")
    op.add_argument("--liveness", help="e.g. http://0.0.0.0:8080/healthz")
    op.add_argument("--warm-pool-size", type=int, default=1, metavar="N",
                    help="warm pool pods per runtime in use, per namespace (0: none; a Namespace's label "
                         "kambda.dev/warm-pool-size overrides it)")  # fmt: skip
    op.set_defaults(func=_operator)

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
