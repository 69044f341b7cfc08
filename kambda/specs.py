"""The Function manifest model: one parser for the local backend's YAML files and the Kubernetes custom resource.

Parsing is pure: a plain dict (as YAML or the API server gives it) goes in, a frozen `FunctionSpec` comes out, or a
`SpecError` listing every problem with its field path (`spec.memoryMB: must be between 128 and 10240`). Defaults
are Lambda's. The CRD schema in crds/ mirrors these rules so the API server rejects the same manifests.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import logconfig
from .naming import API_VERSION

PYTHON_RUNTIMES = ("python3.9", "python3.10", "python3.11", "python3.12", "python3.13")
NODEJS_RUNTIMES = ("nodejs18.x", "nodejs20.x", "nodejs22.x")
PROVIDED_RUNTIMES = ("provided", "provided.al2", "provided.al2023")
RUNTIMES = PYTHON_RUNTIMES + NODEJS_RUNTIMES + PROVIDED_RUNTIMES
MANAGED_RUNTIMES = PYTHON_RUNTIMES + NODEJS_RUNTIMES  # the handler is module.function, run by AWS's client
# What the default function-pod image (Debian bookworm's Python 3.11) runs on Kubernetes; other runtimes need an
# image of their own (the operator's --runtime-image-for).
DEFAULT_IMAGE_RUNTIMES = ("python3.11", "provided", "provided.al2", "provided.al2023")


def image_runtimes(others: Iterable[str]) -> list[str]:
    """The runtimes a Kubernetes installation offers: the default image's and those with an image of their own."""
    offered = {*DEFAULT_IMAGE_RUNTIMES, *others}
    return [r for r in RUNTIMES if r in offered]


EGRESS = ("all", "cluster", "none")
MEMORY_MB = (128, 10240)
TIMEOUT_SECONDS = (1, 900)
MAX_RETRY_ATTEMPTS = (0, 2)
MAX_EVENT_AGE_SECONDS = (60, 21600)
EPHEMERAL_STORAGE_MB = (512, 10240)  # Lambda's EphemeralStorage.Size: /tmp, 512 MB unless set

# Fields a version snapshots (Lambda's "version configuration"); scaling, concurrency and async settings are the
# function's and change without a new version.
VERSIONED_FIELDS = (
    "runtime", "handler", "code", "memoryMB", "timeoutSeconds", "environment", "secretEnvironment",
    "serviceAccountName", "network", "layers", "imageConfig", "logging", "ephemeralStorage", "snapStart",
)  # fmt: skip
# Packed sandboxes (Kubernetes): a function pod hosts up to this many sandboxes of its version. Unless the Function
# says, as many as fit in POD_MEMORY_BUDGET_MB (8 of 128 MB, 2 of 512 MB, 1 from 1,024 MB up).
SANDBOXES_PER_POD = (1, 64)
POD_MEMORY_BUDGET_MB = 1024
MAX_DEFAULT_SLOTS = 8
SNAP_START_APPLY_ON = ("PublishedVersions", "None")  # Lambda's SnapStart.ApplyOn
MAX_LAYERS = 5  # Lambda's limit per function
MAX_TAGS = 50
TAG_KEY_RE = re.compile(r"[\w\s.:/=+@-]{1,128}\Z")

# Validating patterns are used with `fullmatch` and end in \Z: `$` also matches before a trailing newline.
NAME_RE = re.compile(r"[a-zA-Z0-9-_]{1,64}\Z")
# Kubernetes object names are stricter than Lambda's; a Function is both, so it must satisfy both.
K8S_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
ENV_NAME_RE = re.compile(r"[a-zA-Z]([a-zA-Z0-9_])*\Z")
HANDLER_RE = re.compile(r"[^\s]{1,128}\Z")
SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")
# Lambda reserves these; a function may not override them (configuration-envvars).
RESERVED_ENV = frozenset(
    {
        "_HANDLER",
        "_X_AMZN_TRACE_ID",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "AWS_LAMBDA_LOG_GROUP_NAME",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_LAMBDA_RUNTIME_API",
        "LAMBDA_TASK_ROOT",
        "LAMBDA_RUNTIME_DIR",
        "AWS_LAMBDA_MAX_CONCURRENCY",
    }
)


class SpecError(ValueError):
    """A manifest that cannot become a Function; `errors` names each field path and the rule it breaks."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Code:
    """Exactly one source is set; `sha256` alone is a source too (a package in kambda's code store)."""

    files: Mapping[str, str] | None = None  # inline: relative path -> text; a file named bootstrap is executable
    path: str | None = None  # a directory (made absolute by the manifest loader; local backend only)
    config_map: str | None = None  # a ConfigMap in the Function's namespace, one key per file
    url: str | None = None  # a zip archive the agent downloads and checks against sha256
    sha256: str | None = None  # hex SHA-256 of a zip: the one at `url`, or without `url` the code store's
    image: str | None = None  # a container image with the function baked in

    @property
    def package(self) -> str | None:
        """The hex SHA-256 of the code store's package this code is, or None (another source)."""
        return self.sha256 if self.url is None else None


@dataclass(frozen=True)
class ImageConfig:
    entry_point: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None
    working_directory: str | None = None


@dataclass(frozen=True)
class SecretEnv:
    name: str
    secret_name: str
    key: str


@dataclass(frozen=True)
class Concurrency:
    reserved: int | None = None  # hard cap on concurrent executions of all versions; 0 disables the function
    provisioned: int = 0  # provisioned concurrency of the version $LATEST runs (the newest)
    # Lambda's provisioned concurrency configs: qualifier (a version number or an alias) -> executions. An alias's
    # is shared among its versions by their routing weights.
    provisioned_configs: Mapping[str, int] = field(default_factory=dict)

    @property
    def provisioned_total(self) -> int:
        return self.provisioned + sum(self.provisioned_configs.values())


@dataclass(frozen=True)
class Scaling:
    idle_seconds: float = 300.0  # an instance without work for this long is stopped (scale to zero)
    max_instances: int | None = None  # cap when no reserved concurrency is set
    burst: int = 1000  # at most this many instances started in one scaling step
    sandboxes_per_pod: int | None = None  # on Kubernetes: slots of a function pod (None: from memory, slots_per_pod)


@dataclass(frozen=True)
class AsyncConfig:
    max_retry_attempts: int = 2
    max_event_age_seconds: int = 21600
    on_success: str | None = None  # destination function name
    on_failure: str | None = None


@dataclass(frozen=True)
class LoggingConfig:
    """Lambda's LoggingConfig. The levels are set (to INFO unless given) exactly when the format is JSON."""

    log_format: str = logconfig.TEXT
    application_log_level: str | None = None
    system_log_level: str | None = None


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    namespace: str
    runtime: str
    handler: str
    code: Code
    memory_mb: int = 128
    timeout_seconds: int = 3
    environment: Mapping[str, str] = field(default_factory=dict)
    concurrency: Concurrency = Concurrency()
    scaling: Scaling = Scaling()
    async_config: AsyncConfig = AsyncConfig()
    description: str = ""
    secret_environment: tuple[SecretEnv, ...] = ()
    service_account_name: str | None = None  # None: the pod gets no service-account token (no "IAM role")
    egress: str = "all"  # all | cluster | none (the NetworkPolicy, Lambda's VPC settings)
    retain_versions: int = 5
    layers: tuple[str, ...] = ()  # hex SHA-256s of code-store packages, unpacked in order under /opt
    image_config: ImageConfig = ImageConfig()  # a container-image function's overrides of its image
    logging: LoggingConfig = LoggingConfig()
    ephemeral_storage_mb: int = EPHEMERAL_STORAGE_MB[0]  # the size of the function's /tmp
    # spec.snapStart.applyOn == PublishedVersions: sandboxes are restored from an initialised template. Every kambda
    # version is published (even the one $LATEST runs), so it applies to all of them.
    snap_start: bool = False
    role: str | None = None  # Lambda's execution role ARN: kept and reported; a pod's identity is its service account
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_python(self) -> bool:
        return self.runtime in PYTHON_RUNTIMES


class _Reader:
    """Reads typed fields out of nested dicts, remembering every problem with its path instead of stopping."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, path: str, rule: str) -> None:
        self.errors.append(f"{path}: {rule}")

    def mapping(self, obj: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
        value = obj.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(f"{path}.{key}", "must be an object")
            return {}
        return value

    def string(self, obj: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> str | None:
        value = obj.get(key)
        if value is None:
            if required:
                self.fail(f"{path}.{key}", "is required")
            return None
        if not isinstance(value, str):
            self.fail(f"{path}.{key}", "must be a string")
            return None
        return value

    def integer(self, obj: Mapping[str, Any], key: str, path: str, bounds: tuple[int, int | None]) -> int | None:
        value = obj.get(key)
        if value is None:
            return None
        # bool is an int subclass; `memoryMB: true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"{path}.{key}", "must be an integer")
            return None
        low, high = bounds
        if value < low or (high is not None and value > high):
            rule = f"must be between {low} and {high}" if high is not None else f"must be at least {low}"
            self.fail(f"{path}.{key}", rule)
            return None
        return value

    def number(self, obj: Mapping[str, Any], key: str, path: str, minimum: float) -> float | None:
        value = obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(f"{path}.{key}", "must be a number")
            return None
        if value < minimum:
            self.fail(f"{path}.{key}", f"must be at least {minimum:g}")
            return None
        return float(value)


def parse_function(manifest: Mapping[str, Any], *, default_namespace: str = "default") -> FunctionSpec:
    """Turn a `Function` manifest into a `FunctionSpec`, or raise `SpecError` naming every bad field."""
    r = _Reader()
    if manifest.get("kind", "Function") != "Function":
        r.fail("kind", "must be Function")
    api_version = manifest.get("apiVersion", API_VERSION)
    if api_version != API_VERSION:
        r.fail("apiVersion", f"must be {API_VERSION}")
    meta = r.mapping(manifest, "metadata", "")
    name = r.string(meta, "name", "metadata", required=True) or ""
    if name and not (NAME_RE.fullmatch(name) and K8S_NAME_RE.fullmatch(name)):
        r.fail("metadata.name", "must be 1-64 lower-case letters, digits or '-', starting and ending alphanumeric")
    namespace = r.string(meta, "namespace", "metadata") or default_namespace
    spec = r.mapping(manifest, "spec", "")
    if "spec" not in manifest:
        r.fail("spec", "is required")

    is_image = isinstance(spec.get("code"), Mapping) and "image" in spec["code"]
    runtime = r.string(spec, "runtime", "spec", required=True) or ""
    if is_image and runtime and runtime not in PROVIDED_RUNTIMES:
        # Lambda's image functions have no runtime: the image brings its own, so the function provides it.
        r.fail("spec.runtime", "a container image brings its own runtime: use provided (or provided.al2023)")
    if runtime and runtime not in RUNTIMES:
        r.fail("spec.runtime", f"must be one of {', '.join(RUNTIMES)}")
    handler = r.string(spec, "handler", "spec", required=runtime in MANAGED_RUNTIMES and not is_image) or ""
    if handler and not HANDLER_RE.fullmatch(handler):
        r.fail("spec.handler", "must be 1-128 characters without white space")
    if runtime in MANAGED_RUNTIMES and handler and "." not in handler:
        r.fail("spec.handler", "must be module.function (e.g. app.handler)")

    code = _parse_code(r, spec)
    memory = r.integer(spec, "memoryMB", "spec", MEMORY_MB)
    timeout = r.integer(spec, "timeoutSeconds", "spec", TIMEOUT_SECONDS)
    environment = _parse_environment(r, spec)

    conc = r.mapping(spec, "concurrency", "spec")
    reserved = r.integer(conc, "reserved", "spec.concurrency", (0, None))
    provisioned = r.integer(conc, "provisioned", "spec.concurrency", (0, None)) or 0
    provisioned_configs = _parse_provisioned_configs(r, conc)
    total = provisioned + sum(provisioned_configs.values())
    if reserved is not None and total > reserved:
        what = "spec.concurrency.provisioned" if not provisioned_configs else "spec.concurrency.provisionedConfigs"
        r.fail(what, f"must not exceed spec.concurrency.reserved ({total} provisioned in all)")

    scal = r.mapping(spec, "scaling", "spec")
    idle = r.number(scal, "idleSeconds", "spec.scaling", 0)
    max_instances = r.integer(scal, "maxInstances", "spec.scaling", (1, None))
    burst = r.integer(scal, "burst", "spec.scaling", (1, None))
    per_pod = r.integer(scal, "sandboxesPerPod", "spec.scaling", SANDBOXES_PER_POD)

    asy = r.mapping(spec, "async", "spec")
    retries = r.integer(asy, "maxRetryAttempts", "spec.async", MAX_RETRY_ATTEMPTS)
    max_age = r.integer(asy, "maxEventAgeSeconds", "spec.async", MAX_EVENT_AGE_SECONDS)
    on_success = _destination(r, asy, "onSuccess")
    on_failure = _destination(r, asy, "onFailure")
    description = r.string(spec, "description", "spec") or ""
    if len(description) > 256:
        r.fail("spec.description", "must be at most 256 characters")
    role = r.string(spec, "role", "spec")
    tags = _parse_tags(r, spec)
    secret_env = _parse_secret_environment(r, spec)
    service_account = r.string(spec, "serviceAccountName", "spec")
    egress = r.string(r.mapping(spec, "network", "spec"), "egress", "spec.network") or "all"
    if egress not in EGRESS:
        r.fail("spec.network.egress", f"must be one of {', '.join(EGRESS)}")
    retain = r.integer(spec, "retainVersions", "spec", (1, None))
    layers = _parse_layers(r, spec)
    image_config = _parse_image_config(r, spec)
    if is_image and layers:
        r.fail("spec.layers", "a container-image function has no layers (its image holds what they would)")
    logging = _parse_logging(r, spec)
    storage = r.integer(
        r.mapping(spec, "ephemeralStorage", "spec"), "size", "spec.ephemeralStorage", EPHEMERAL_STORAGE_MB
    )
    apply_on = r.string(r.mapping(spec, "snapStart", "spec"), "applyOn", "spec.snapStart") or "None"
    if apply_on not in SNAP_START_APPLY_ON:
        r.fail("spec.snapStart.applyOn", f"must be one of {', '.join(SNAP_START_APPLY_ON)}")
    elif apply_on == "PublishedVersions" and not runtime.startswith("python"):
        r.fail("spec.snapStart", f"SnapStart is offered for python* runtimes, not {runtime}")
    elif apply_on == "PublishedVersions" and total:
        r.fail("spec.snapStart", "SnapStart and provisioned concurrency cannot be used together (as on Lambda)")

    if r.errors:
        raise SpecError(r.errors)
    return FunctionSpec(
        name=name,
        namespace=namespace,
        runtime=runtime,
        handler=handler,
        code=code,
        memory_mb=memory or 128,
        timeout_seconds=timeout or 3,
        environment=environment,
        concurrency=Concurrency(reserved=reserved, provisioned=provisioned, provisioned_configs=provisioned_configs),
        scaling=Scaling(
            idle_seconds=300.0 if idle is None else idle,
            max_instances=max_instances,
            burst=burst or 1000,
            sandboxes_per_pod=per_pod,
        ),
        async_config=AsyncConfig(
            max_retry_attempts=2 if retries is None else retries,
            max_event_age_seconds=max_age or 21600,
            on_success=on_success,
            on_failure=on_failure,
        ),
        description=description,
        secret_environment=secret_env,
        service_account_name=service_account,
        egress=egress,
        retain_versions=retain or 5,
        layers=layers,
        image_config=image_config,
        logging=logging,
        ephemeral_storage_mb=storage or EPHEMERAL_STORAGE_MB[0],
        snap_start=apply_on == "PublishedVersions",
        role=role,
        tags=tags,
    )


PROVISIONED_QUALIFIER_RE = re.compile(r"(?:[1-9][0-9]{0,9}|(?![0-9]+\Z)[a-zA-Z0-9-_]{1,128})\Z")


def _parse_provisioned_configs(r: _Reader, conc: Mapping[str, Any]) -> Mapping[str, int]:
    """`spec.concurrency.provisionedConfigs`: a published version's number or an alias name -> at least 1."""
    configs = r.mapping(conc, "provisionedConfigs", "spec.concurrency")
    parsed: dict[str, int] = {}
    for qualifier, value in configs.items():
        path = f"spec.concurrency.provisionedConfigs.{qualifier}"
        if not isinstance(qualifier, str) or not PROVISIONED_QUALIFIER_RE.fullmatch(qualifier):
            r.fail(path, "must be a published version's number or an alias name ($LATEST cannot have any)")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            r.fail(path, "must be an integer of at least 1")
        else:
            parsed[qualifier] = value
    return parsed


def _parse_tags(r: _Reader, spec: Mapping[str, Any]) -> Mapping[str, str]:
    """Lambda's tags: at most 50 string pairs; keys of 1-128 letters, digits, spaces or _.:/=+-@, not starting with
    the reserved aws:; values up to 256 characters."""
    raw = r.mapping(spec, "tags", "spec")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        r.fail("spec.tags", "must map strings to strings")
        return {}
    if len(raw) > MAX_TAGS:
        r.fail("spec.tags", f"at most {MAX_TAGS} tags")
    for key, value in raw.items():
        if not TAG_KEY_RE.fullmatch(key):
            r.fail(f"spec.tags.{key}", "a key is 1-128 letters, digits, spaces or _.:/=+-@")
        elif key.lower().startswith("aws:"):
            r.fail(f"spec.tags.{key}", "the aws: prefix is reserved")
        if len(value) > 256:
            r.fail(f"spec.tags.{key}", "a value is at most 256 characters")
    return dict(raw)


def _parse_logging(r: _Reader, spec: Mapping[str, Any]) -> LoggingConfig:
    """`logging: {format, applicationLogLevel, systemLogLevel}`. Lambda refuses levels with the Text format (they
    filter JSON records only), and so does this, rather than ignoring them."""
    raw = r.mapping(spec, "logging", "spec")
    log_format = r.string(raw, "format", "spec.logging") or logconfig.TEXT
    if log_format not in logconfig.FORMATS:
        r.fail("spec.logging.format", f"must be one of {', '.join(logconfig.FORMATS)}")
    levels: dict[str, str | None] = {}
    for key, allowed in (
        ("applicationLogLevel", logconfig.APPLICATION_LEVELS),
        ("systemLogLevel", logconfig.SYSTEM_LEVELS),
    ):
        level = r.string(raw, key, "spec.logging")
        if level is not None and level not in allowed:
            r.fail(f"spec.logging.{key}", f"must be one of {', '.join(allowed)}")
        elif level is not None and log_format != logconfig.JSON:
            # Lambda's own words: "LogLevel is not supported when LogFormat is set to "Text". ..."
            r.fail(f"spec.logging.{key}", "is not supported when format is Text: remove it or set format: JSON")
        levels[key] = level
    if log_format != logconfig.JSON:
        return LoggingConfig()
    return LoggingConfig(
        log_format=logconfig.JSON,
        application_log_level=levels["applicationLogLevel"] or logconfig.DEFAULT_LEVEL,
        system_log_level=levels["systemLogLevel"] or logconfig.DEFAULT_LEVEL,
    )


def _parse_image_config(r: _Reader, spec: Mapping[str, Any]) -> ImageConfig:
    """Lambda's ImageConfig: EntryPoint and Command replace the image's, WorkingDirectory its working directory."""
    raw = r.mapping(spec, "imageConfig", "spec")
    lists: dict[str, tuple[str, ...] | None] = {}
    for key in ("entryPoint", "command"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            r.fail(f"spec.imageConfig.{key}", "must be a list of strings")
            value = None
        lists[key] = tuple(value) if value is not None else None
    working = r.string(raw, "workingDirectory", "spec.imageConfig")
    if working is not None and not working.startswith("/"):
        r.fail("spec.imageConfig.workingDirectory", "must be an absolute path")
    return ImageConfig(entry_point=lists["entryPoint"], command=lists["command"], working_directory=working)


def _parse_layers(r: _Reader, spec: Mapping[str, Any]) -> tuple[str, ...]:
    """`layers: [{sha256: hex}, ...]`: packages in the code store, at most five (Lambda's rule)."""
    raw = spec.get("layers")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.fail("spec.layers", "must be a list of {sha256: ...}")
        return ()
    if len(raw) > MAX_LAYERS:
        r.fail("spec.layers", f"at most {MAX_LAYERS} layers per function (got {len(raw)})")
    layers: list[str] = []
    for i, layer in enumerate(raw):
        sha = layer.get("sha256") if isinstance(layer, Mapping) else None
        if not isinstance(sha, str) or not SHA256_RE.fullmatch(sha):
            r.fail(f"spec.layers[{i}].sha256", "must be 64 lower-case hex digits (a package in the code store)")
        else:
            layers.append(sha)
    return tuple(layers)


def _parse_code(r: _Reader, spec: Mapping[str, Any]) -> Code:
    code = r.mapping(spec, "code", "spec")
    if "code" not in spec:
        r.fail("spec.code", "is required")
        return Code()
    files_raw = code.get("files")
    path = r.string(code, "path", "spec.code")
    config_map = r.string(r.mapping(code, "configMap", "spec.code"), "name", "spec.code.configMap")
    url = r.string(code, "url", "spec.code")
    sha256 = r.string(code, "sha256", "spec.code")
    image = r.string(code, "image", "spec.code")
    if url is not None and not re.match(r"^https?://", url):
        r.fail("spec.code.url", "must be an http(s) URL")
    if url is not None and sha256 is None:
        r.fail("spec.code.url", "needs sha256, the zip's SHA-256 in hex")
    if sha256 is not None and not SHA256_RE.fullmatch(sha256):
        r.fail("spec.code.sha256", "must be 64 lower-case hex digits")
    files: dict[str, str] | None = None
    if files_raw is not None:
        if not isinstance(files_raw, Mapping) or not files_raw:
            r.fail("spec.code.files", "must be a non-empty object of file name to text")
        else:
            files = {}
            for fname, text in files_raw.items():
                if not isinstance(text, str):
                    r.fail(f"spec.code.files.{fname}", "must be a string")
                elif not _is_safe_relative(str(fname)):
                    r.fail(f"spec.code.files.{fname}", "must be a relative path inside the code directory")
                else:
                    files[str(fname)] = text
    package = sha256 if url is None else None  # sha256 alone: the package with that hash in the code store
    sources = [files_raw, path, config_map, url, package, image]
    if sum(source is not None for source in sources) != 1:
        r.fail("spec.code", "must set exactly one of files, path, configMap, url (with sha256), sha256 or image")
    return Code(files=files, path=path, config_map=config_map, url=url, sha256=sha256, image=image)


def _is_safe_relative(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _parse_environment(r: _Reader, spec: Mapping[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for key, value in r.mapping(spec, "environment", "spec").items():
        path = f"spec.environment.{key}"
        if not ENV_NAME_RE.fullmatch(str(key)):
            r.fail(path, "name must start with a letter and contain only letters, digits and '_'")
        elif key in RESERVED_ENV:
            r.fail(path, "is reserved by the Lambda runtime environment")
        elif isinstance(value, bool) or not isinstance(value, str | int | float):
            r.fail(path, "must be a string")
        else:
            env[str(key)] = str(value)
    return env


def _parse_secret_environment(r: _Reader, spec: Mapping[str, Any]) -> tuple[SecretEnv, ...]:
    raw = spec.get("secretEnvironment")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.fail("spec.secretEnvironment", "must be a list")
        return ()
    entries: list[SecretEnv] = []
    for i, item in enumerate(raw):
        path = f"spec.secretEnvironment[{i}]"
        if not isinstance(item, Mapping):
            r.fail(path, "must be an object")
            continue
        name = r.string(item, "name", path, required=True)
        secret = r.string(item, "secretName", path, required=True)
        key = r.string(item, "key", path, required=True)
        if name and (not ENV_NAME_RE.fullmatch(name) or name in RESERVED_ENV):
            r.fail(f"{path}.name", "must be a valid, unreserved environment variable name")
        elif name and secret and key:
            entries.append(SecretEnv(name, secret, key))
    return tuple(entries)


def _destination(r: _Reader, asy: Mapping[str, Any], key: str) -> str | None:
    value = r.string(asy, key, "spec.async")
    if value is not None and not NAME_RE.fullmatch(value):
        r.fail(f"spec.async.{key}", "must be a function name")
        return None
    return value


def version_spec(function_spec: Mapping[str, Any], snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """A version's spec: the function's own settings (scaling, concurrency, async) from its current spec, every
    versioned field from the version's snapshot only (a field added in a later version must not leak into it)."""
    shared = {k: v for k, v in function_spec.items() if k not in VERSIONED_FIELDS}
    return {**shared, **snapshot}


def slots_per_pod(fn: FunctionSpec) -> int:
    """How many sandboxes of a version one function pod hosts (Kubernetes). An image function's runtime is its own
    container, with one Runtime API port: one per pod. Otherwise the Function's `sandboxesPerPod`, else as many of
    its memory size as fit in POD_MEMORY_BUDGET_MB, at most MAX_DEFAULT_SLOTS."""
    if fn.code.image is not None:
        return 1
    if fn.scaling.sandboxes_per_pod is not None:
        return fn.scaling.sandboxes_per_pod
    return max(1, min(MAX_DEFAULT_SLOTS, POD_MEMORY_BUDGET_MB // fn.memory_mb))
