"""`kambda functions|versions|aliases|concurrency`: thin clients of the gateway's Lambda control-plane API.

They are boto3 calls, signed by the AWS credential chain as the AWS CLI's are (unsigned without credentials), and
print the API's answer as JSON: the same code path as any Lambda tool, so what the CLI shows is what the API says.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import signing

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"


def client(endpoint: str) -> Any:
    import boto3
    import botocore.session
    from botocore import UNSIGNED
    from botocore.config import Config

    signed = botocore.session.Session().get_credentials() is not None
    config = Config(retries={"total_max_attempts": 1}, read_timeout=120,
                    **({} if signed else {"signature_version": UNSIGNED}))  # fmt: skip
    return boto3.client("lambda", endpoint_url=endpoint, config=config, region_name=signing.region())


def _weights(items: list[str] | None) -> dict[str, Any]:
    if not items:
        return {}
    weights = {}
    for item in items:
        version, _, weight = item.partition("=")
        try:
            weights[version] = float(weight)
        except ValueError:
            raise UsageError(f"--weight {item!r}: VERSION=SHARE, e.g. 1=0.1") from None
    return {"RoutingConfig": {"AdditionalVersionWeights": weights}}


class UsageError(ValueError):
    """A command line the API cannot be asked with."""


def _all(lam: Any, operation: str, key: str, **kwargs: Any) -> list[Any]:
    return [item for page in lam.get_paginator(operation).paginate(**kwargs) for item in page[key]]


def _call(args: argparse.Namespace) -> Any:
    lam = client(args.endpoint)
    fn = {"FunctionName": args.name} if getattr(args, "name", None) else {}
    qualifier = {"Qualifier": args.qualifier} if getattr(args, "qualifier", None) else {}
    match (args.command, args.action):
        case ("functions", "ls"):
            return _all(lam, "list_functions", "Functions")
        case ("functions", "get"):
            return lam.get_function(**fn, **qualifier)
        case ("functions", "rm"):
            return lam.delete_function(**fn, **qualifier)
        case ("versions", "ls"):
            return _all(lam, "list_versions_by_function", "Versions", **fn)
        case ("versions", "publish"):
            return lam.publish_version(**fn)
        case ("aliases", "ls"):
            return _all(lam, "list_aliases", "Aliases", **fn)
        case ("aliases", "create"):
            return lam.create_alias(**fn, Name=args.alias, FunctionVersion=args.version, **_weights(args.weight))
        case ("aliases", "update"):
            version = {"FunctionVersion": args.version} if args.version else {}
            return lam.update_alias(**fn, Name=args.alias, **version, **_weights(args.weight))
        case ("aliases", "rm"):
            return lam.delete_alias(**fn, Name=args.alias)
        case ("concurrency", "get"):
            return lam.get_function_concurrency(**fn)
        case ("concurrency", "put"):
            return lam.put_function_concurrency(**fn, ReservedConcurrentExecutions=args.reserved)
        case ("concurrency", "rm"):
            return lam.delete_function_concurrency(**fn)
    raise ValueError(f"kambda {args.command} {args.action}")


def run(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

    try:
        answer = _call(args)
    except (ParamValidationError, UsageError) as exc:
        print(f"kambda {args.command} {args.action}: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        error = exc.response.get("Error", {})
        print(f"{error.get('Code')}: {error.get('Message')}", file=sys.stderr)
        return 2
    except BotoCoreError as exc:
        print(f"cannot reach the gateway at {args.endpoint}: {exc}", file=sys.stderr)
        return 2
    if isinstance(answer, dict):
        answer.pop("ResponseMetadata", None)
    if answer not in (None, {}):
        print(json.dumps(answer, indent=2, default=str))
    return 0


def add_parsers(sub: Any) -> None:
    def parser(command: str, help: str, actions: tuple[str, ...]) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(command, help=help)
        p.add_argument("action", choices=actions)
        p.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
        p.set_defaults(func=run)
        return p

    functions = parser("functions", "list, show or delete functions (Lambda's API)", ("ls", "get", "rm"))
    functions.add_argument("name", nargs="?")
    functions.add_argument("--qualifier", help="get: a version or alias; rm: delete this version only")
    versions = parser("versions", "a function's versions: list, or publish $LATEST", ("ls", "publish"))
    versions.add_argument("name")
    aliases = parser("aliases", "a function's aliases", ("ls", "create", "update", "rm"))
    aliases.add_argument("name")
    aliases.add_argument("alias", nargs="?")
    aliases.add_argument("--version", help="create/update: the version the alias points to")
    aliases.add_argument("--weight", action="append", metavar="VERSION=SHARE",
                         help="create/update: another version's share of traffic, e.g. 1=0.1")  # fmt: skip
    concurrency = parser("concurrency", "a function's reserved concurrency", ("get", "put", "rm"))
    concurrency.add_argument("name")
    concurrency.add_argument("reserved", nargs="?", type=int, help="put: the reserved concurrent executions")
