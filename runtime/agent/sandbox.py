"""One sandbox: a runtime process, the Runtime API it talks to, and the gateway session that feeds it.

Lifecycle, as Lambda's: the runtime is started (init), asks for work (/next), answers (/response or /error), asks
again. The sandbox turns the three ways an invocation can end badly into the caller's error:
- the deadline passes: the runtime's process group is killed, the caller gets `Sandbox.Timedout`;
- the runtime dies mid-invocation: `Runtime.ExitError`;
- init fails (/init/error, or the runtime exits before ever asking for work): the next invocation gets that error.
After any of these the runtime is started afresh, so the following invocation is a cold start. A broken runtime is
only restarted after it has answered an invocation, so a function that cannot init does not spin.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import glob
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from kambda import logconfig, naming

from ..rpc import runtime_pb2 as pb
from . import code, external, freezer, isolation, limits, logs, peers, reports, runtime_api, snapstart
from .session import Session

log = logging.getLogger(__name__)
PYTHON_PREFIX = "python"
NODE_PREFIX = "nodejs"
# Where hack/build-node-ric.sh leaves AWS's Node.js runtime interface client (its native part built) on a host.
NODE_RIC_CACHE = "/var/cache/kambda"
# How long a new sandbox waits for the gateway to say its initialization type before starting on-demand anyway.
INITIALIZATION_TYPE_WAIT = 2.0
# Lambda's LAMBDA_RUNTIME_DIR: the runtime interface client and the SDK Lambda provides (boto3), and nothing else.
RUNTIME_DIR = "/var/runtime"


def default_node_ric() -> str | None:
    """The aws-lambda-ric package directory for nodejs* functions: $KAMBDA_NODE_RIC, else the newest build cached
    by hack/build-node-ric.sh."""
    if os.environ.get("KAMBDA_NODE_RIC"):
        return os.environ["KAMBDA_NODE_RIC"]
    builds = sorted(glob.glob(os.path.join(NODE_RIC_CACHE, "node-ric-*", "node_modules", "aws-lambda-ric")))
    return builds[-1] if builds else None


def base_interpreter() -> str:
    """The interpreter this agent runs on, outside any virtualenv (whose packages are the platform's)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def python_argv(python: str, site: str, handler: str) -> list[str]:
    """awslambdaric under `python -S`: no site-packages at all, neither the platform's nor the distribution's. The
    handler imports its code (the working directory, first), its layers (PYTHONPATH), the standard library, and
    what Lambda provides, last, as on Lambda; a function that vendors its own boto3 gets its own."""
    boot = (
        f"import sys\nif {site!r} not in sys.path: sys.path.append({site!r})\n"
        "from awslambdaric.__main__ import main\nmain(sys.argv)"
    )
    return [python, "-S", "-c", boot, handler]


def site_binds(site: str) -> tuple[tuple[str, str], ...]:
    """Read-only binds that show `site`'s entries at RUNTIME_DIR in an isolated sandbox: the entries themselves,
    links resolved, so nothing else of the directories they live in (the platform's virtualenv) is visible."""
    try:
        names = sorted(os.listdir(site))
    except OSError:
        return ()
    return tuple((os.path.realpath(os.path.join(site, n)), f"{RUNTIME_DIR}/{n}") for n in names)


@dataclass(frozen=True)
class SandboxConfig:
    """Everything needed to run one instance of one function version."""

    instance_id: str
    function: str  # namespace/name
    version: str
    runtime: str  # python3.x or provided*
    handler: str
    code_dir: str
    memory_mb: int
    timeout_seconds: float
    environment: Mapping[str, str] = field(default_factory=dict)
    region: str = "us-east-1"
    python: str = field(default_factory=lambda: base_interpreter())  # of python* functions (the runtime's version)
    # What Lambda provides python* functions (awslambdaric, boto3 and their dependencies): a directory of them, or of
    # links to them. In a runtime image it is /var/runtime itself; the local backend builds one (hostruntimes.py).
    python_site: str = RUNTIME_DIR
    use_cgroups: bool = True
    passthrough_env: tuple[str, ...] = ()  # the agent's own variables (e.g. from Secrets) the runtime also gets
    code_url: str | None = None  # a zip to download into code_dir before the first start
    code_sha256: str | None = None  # hex; alone with code_store: the package with this hash in kambda's code store
    code_store: str | None = None  # base URL of the gateway's code store (http://host:port)
    isolation: str = "none"  # auto | bwrap | none (isolation.py); a pod is isolated by Kubernetes
    node: str = "node"  # the Node.js interpreter of nodejs* functions
    node_ric: str | None = field(default_factory=default_node_ric)  # the aws-lambda-ric package directory
    # A container-image function: its runtime is the image's own entry point in another container of the pod
    # (external.py), and the Runtime API listens on this fixed port, Lambda's 127.0.0.1:9001.
    external_runtime: bool = False
    runtime_api_port: int = 0  # 0: any free port (the runtime is told it in AWS_LAMBDA_RUNTIME_API)
    layers: tuple[str, ...] = ()  # hex SHA-256s of layer packages; fetched from code_store into opt_dir
    opt_dir: str | None = None  # the layers' merged tree (the runtime sees it at /opt when isolated or in a pod)
    # Where the agent writes what the runtime sees at code_dir and opt_dir, when that is elsewhere: a warm-pool pod
    # mounts each volume twice, read-only where the runtime looks (as a dedicated pod's inline code is), and
    # writable for the agent that fetches the code after the pod has started (pool.py).
    code_write_dir: str | None = None
    opt_write_dir: str | None = None
    tmp_mb: int = 512  # the size of the sandbox's private /tmp (Lambda's ephemeralStorage), where the agent sets it
    # Lambda's advanced logging controls (LoggingConfig): Text | JSON, and the two levels (None: Lambda's default).
    log_format: str = "Text"
    application_log_level: str | None = None
    system_log_level: str | None = None
    # Lambda's SnapStart (spec.snapStart): a python* sandbox is forked from its version's initialised template
    # (snapstart.py), and runs with AWS_LAMBDA_INITIALIZATION_TYPE=snap-start either way.
    snap_start: bool = False

    @property
    def name(self) -> str:
        return self.function.split("/", 1)[-1]

    @property
    def code_target(self) -> str:
        """Where the agent puts the code."""
        return self.code_write_dir or self.code_dir

    @property
    def opt_target(self) -> str | None:
        """Where the agent unpacks the layers."""
        return None if self.opt_dir is None else self.opt_write_dir or self.opt_dir

    def runtime_argv(
        self, task_root: str | None = None, opt_root: str | None = None, site_root: str | None = None
    ) -> list[str]:
        """The runtime's command line, with the code at `task_root`, layers at `opt_root` and Lambda's provided
        libraries at `site_root` (where the runtime sees them). A custom runtime's `bootstrap` is the code's, else a
        layer's (Lambda looks in that order)."""
        if self.runtime.startswith(PYTHON_PREFIX):
            return python_argv(self.python, site_root or self.python_site, self.handler)
        if self.runtime.startswith(NODE_PREFIX):
            # Unmodified: the client's own entry point, which loads the handler from its working directory.
            ric = self.node_ric or "aws-lambda-ric-not-installed"
            return [self.node, os.path.join(ric, "bin", "index.mjs"), self.handler]
        if (
            opt_root is not None
            and self.opt_dir is not None
            and not os.path.lexists(os.path.join(self.code_dir, "bootstrap"))
        ):
            return [os.path.join(opt_root, "bootstrap")]
        return [os.path.join(task_root or self.code_dir, "bootstrap")]

    def layer_env(self, opt_root: str) -> dict[str, str]:
        """Where Lambda's runtimes look in layers: /opt/bin, /opt/lib, /opt/python, /opt/nodejs/node_modules."""
        env = {
            "PATH": f"{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}:{opt_root}/bin",
            "LD_LIBRARY_PATH": f"{opt_root}/lib",
            "NODE_PATH": f"{opt_root}/nodejs/node_modules",
        }
        if self.runtime.startswith(PYTHON_PREFIX):
            version = self.runtime.removeprefix(PYTHON_PREFIX)
            env["PYTHONPATH"] = f"{opt_root}/python/lib/python{version}/site-packages:{opt_root}/python"
        return env

    def runtime_dir(self, task_root: str | None, opt_root: str | None, site_root: str | None) -> str:
        if self.runtime.startswith(PYTHON_PREFIX):
            return site_root or self.python_site
        return os.path.dirname(self.runtime_argv(task_root, opt_root, site_root)[0])

    def runtime_env(
        self,
        api_port: int,
        task_root: str | None = None,
        opt_root: str | None = None,
        site_root: str | None = None,
        initialization_type: str = naming.ON_DEMAND,
    ) -> dict[str, str]:
        """The reserved Lambda environment plus the function's own variables (configuration-envvars)."""
        stream = f"{time.strftime('%Y/%m/%d', time.gmtime())}/[{self.version}]{self.instance_id}"
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
            **(self.layer_env(opt_root) if opt_root is not None else {}),
            # Not reserved on Lambda: the function's own setting wins.
            **logconfig.runtime_env(self.log_format, self.application_log_level),
            **self.environment,
            **{name: os.environ[name] for name in self.passthrough_env if name in os.environ},
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{api_port}",
            "_HANDLER": self.handler,
            "LAMBDA_TASK_ROOT": task_root or self.code_dir,
            "LAMBDA_RUNTIME_DIR": self.runtime_dir(task_root, opt_root, site_root),
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_VERSION": self.version,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": stream,
            "AWS_LAMBDA_INITIALIZATION_TYPE": initialization_type,
        }
        if self.snap_start:
            env["AWS_LAMBDA_INITIALIZATION_TYPE"] = naming.SNAP_START
            # As on Lambda: one snapshot serves every environment, so none has a log stream of its own to name.
            del env["AWS_LAMBDA_LOG_GROUP_NAME"], env["AWS_LAMBDA_LOG_STREAM_NAME"]
        if self.runtime.startswith((PYTHON_PREFIX, NODE_PREFIX)):
            env["AWS_EXECUTION_ENV"] = f"AWS_Lambda_{self.runtime}"
        if self.runtime.startswith(NODE_PREFIX) and "NODE_PATH" not in self.environment:
            # Lambda's module search path for Node.js: layers (the version's own first), then the code.
            opt, major = opt_root or "/opt", self.runtime.removeprefix(NODE_PREFIX).split(".")[0]
            task = env["LAMBDA_TASK_ROOT"]
            env["NODE_PATH"] = f"{opt}/nodejs/node{major}/node_modules:{opt}/nodejs/node_modules:{task}"
        return env


def roots_of(config: SandboxConfig, iso: isolation.Isolation) -> tuple[str, str | None, str]:
    """Where the runtime sees its code, its layers and what Lambda provides it: in the sandbox, or on the host."""
    task_root = isolation.TASK_ROOT if iso.enabled else config.code_dir
    opt_root = None if config.opt_dir is None else isolation.OPT_ROOT if iso.enabled else config.opt_dir
    return task_root, opt_root, RUNTIME_DIR if iso.enabled else config.python_site


def runtime_roots(config: SandboxConfig) -> tuple[str, ...]:
    """What the runtime's interpreter and client need visible in the sandbox (read-only)."""
    roots = isolation.python_roots(config.python)
    if config.runtime.startswith(NODE_PREFIX) and config.node_ric:
        roots += (os.path.dirname(os.path.realpath(config.node_ric)),)  # its node_modules
    return roots


async def launch(
    config: SandboxConfig,
    iso: isolation.Isolation,
    argv: list[str],
    *,
    uid: int | None,
    cgroups: limits.SandboxCgroups,
    env: Mapping[str, str],
    write_fd: int,
    pass_fds: tuple[int, ...] = (),
) -> asyncio.subprocess.Process:
    """Start `argv` (paths as the sandbox sees them) as a runtime of `config`: under its isolation and uid, inside
    `cgroups`, in a process group of its own (a timeout kills everything it started), writing to `write_fd`."""
    wrapped = isolation.sandbox_argv(
        argv, iso, code_dir=config.code_dir, opt_dir=config.opt_dir, uid=uid, read_only=runtime_roots(config),
        binds=site_binds(config.python_site) if iso.enabled and config.runtime.startswith(PYTHON_PREFIX) else (),
        tmp_bytes=config.tmp_mb * limits.MIB,  # the Function's ephemeralStorage
    )  # fmt: skip
    return await asyncio.create_subprocess_exec(
        *cgroups.wrap(wrapped), cwd=config.code_dir, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
        stdout=write_fd, stderr=write_fd, start_new_session=True, pass_fds=pass_fds,
    )  # fmt: skip


def uses_template(config: SandboxConfig) -> bool:
    """SnapStart's templates serve Python runtimes the agent starts itself (Lambda's SnapStart has no custom or
    container-image runtimes)."""
    return config.snap_start and config.runtime.startswith(PYTHON_PREFIX) and not config.external_runtime


def template_key(config: SandboxConfig) -> str:
    """What makes two sandboxes forkable from one template: everything of their configuration but the instance and
    where the code was fetched from (a pod's spawned sandboxes find it fetched: they must share the pod's template,
    not make a second one, which cost a packed SnapStart sandbox a whole init)."""
    fields = dataclasses.asdict(config)
    for where in ("instance_id", "code_url", "code_store", "code_write_dir", "opt_write_dir"):
        del fields[where]
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=list).encode()).hexdigest()


def make_template(config: SandboxConfig, sink: logs.Sink) -> snapstart.Template:
    """The version's template: its runtime's interpreter under the sandbox's own isolation, running zygote.py."""
    iso = isolation.detect(config.isolation)
    key = template_key(config)
    uid = isolation.lease_uid() if iso.own_uid else None
    cgroups = limits.create(f"template-{key[:16]}", config.memory_mb, use_cgroups=config.use_cgroups)
    task_root, opt_root, site_root = roots_of(config, iso)

    async def start(extra_env: Mapping[str, str], keep_fd: int, write_fd: int) -> asyncio.subprocess.Process:
        env = {**config.runtime_env(0, task_root, opt_root, site_root), **extra_env, snapstart.SITE_ENV: site_root}
        argv = [config.python, "-S", "-c", snapstart.ZYGOTE_SOURCE, config.handler]
        return await launch(config, iso, argv, uid=None if uid is None else uid.uid, cgroups=cgroups, env=env,
                            write_fd=write_fd, pass_fds=(keep_fd,))  # fmt: skip

    # Lambda gives a SnapStart version's init up to 15 minutes; an agent waits the function's timeout at least.
    return snapstart.Template(
        key, start, cgroups=cgroups, uid=uid, sink=sink, init_timeout=max(30.0, config.timeout_seconds)
    )


@dataclass
class _InFlight:
    invocation: pb.Invocation
    started: float  # monotonic
    init_duration_ms: float
    restore_duration_ms: float = 0.0
    timer: asyncio.TimerHandle | None = None


class Sandbox(runtime_api.RuntimeHost):
    def __init__(
        self, config: SandboxConfig, session: Session, sink: logs.Sink, templates: snapstart.Templates | None = None
    ) -> None:
        self.config = config
        self._templates = templates if uses_template(config) else None
        self._restored = False  # this life of the runtime was forked from the version's SnapStart template
        self._provisioned = False  # initialised ahead of any request, for provisioned concurrency
        self._session = session
        self._sink = sink
        self._isolation = isolation.detect(config.isolation)
        self._uid = isolation.lease_uid() if self._isolation.own_uid else None
        # The uid this life of the runtime runs as: its own, or its template's when restored.
        self._life_uid: int | None = self._uid.uid if self._uid is not None else None
        self._task_root, self._opt_root, self._site_root = roots_of(config, self._isolation)
        self._cgroups = limits.create(config.instance_id, config.memory_mb, use_cgroups=config.use_cgroups)
        self._freezer: freezer.Freezer = freezer.NoFreezer()  # nothing to freeze yet
        self._api = runtime_api.RuntimeAPIServer(self, admit=self._admit)
        self._port = 0
        self._proc: asyncio.subprocess.Process | external.ExternalRuntime | snapstart.ForkedRuntime | None = None
        self._quiet_fd: int | None = None  # external runtime: the never-written end of the log pipe
        self._capture: logs.LogCapture | None = None
        self._spawned_at = 0.0
        self._init_duration_ms: float | None = None  # set when a fresh runtime first asks for work (or dies trying)
        self._asked = asyncio.Event()  # this life's runtime has called /next (an external runtime's proof of life)
        self._served = False  # whether this runtime process has been handed an invocation (else: cold)
        self._init_error: tuple[str, bytes] | None = None
        self._current: _InFlight | None = None
        self._waiting_next = False  # a runtime request is in /next (Lambda serves one at a time)
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self.stopped = asyncio.Event()

    # ---- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        if config.code_url:  # the Function's own URL: never sent the credential
            await asyncio.to_thread(code.fetch, config.code_url, config.code_sha256 or "", config.code_target)
        elif config.code_store:
            await asyncio.to_thread(
                code.fetch_from_store, config.code_store, config.code_sha256 or "", config.code_target,
                function=config.function, credential=self._session.credential,
            )  # fmt: skip
        opt_target = config.opt_target
        if config.layers and config.code_store and opt_target:
            await asyncio.to_thread(
                code.fetch_layers, config.code_store, config.layers, opt_target, code_dir=config.code_target,
                function=config.function, credential=self._session.credential,
            )  # fmt: skip
        self._port = await self._api.start(self.config.runtime_api_port)
        self._supervisor = asyncio.create_task(self._supervise(), name=f"sandbox-{self.config.instance_id}")

    async def stop(self) -> None:
        if self._stopping:
            await self.stopped.wait()
            return
        self._stopping = True
        self._kill()
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        await self._session.close()
        await self._api.close()
        if self._capture is not None:
            self._capture.close()
        if self._quiet_fd is not None:
            os.close(self._quiet_fd)
            self._quiet_fd = None
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
        await asyncio.to_thread(self._cgroups.release)
        if self._uid is not None:
            self._uid.release()  # only now: nothing of this sandbox runs as that uid any more
        self.stopped.set()

    def _admit(self, transport: asyncio.BaseTransport) -> bool:
        """Serve the Runtime API only to the sandbox's own processes (when it has a uid of its own)."""
        if self._life_uid is None:
            return True
        sock = transport.get_extra_info("socket")
        return sock is not None and peers.peer_uid(sock) == self._life_uid

    async def _attach(self) -> external.ExternalRuntime:
        """The external runtime's next life: once its container runs. Its output is its container's log; the
        capture carries only the agent's own START/END/REPORT lines (and the tail returned with LogType=Tail)."""
        if self._capture is None:
            read_fd, self._quiet_fd = os.pipe()
            self._capture = logs.LogCapture(read_fd, self._sink, loop=asyncio.get_running_loop())
        # This life starts now, before its processes are seen: its runtime may ask for work before they have been
        # seen for long enough (and Init Duration includes the container's start, as an image's cold start does).
        self._spawned_at = time.monotonic()
        self._init_duration_ms = None
        self._served = False
        self._init_error = None
        self._asked = asyncio.Event()  # its runtime called /next: it runs, whatever the polls have seen of it yet
        proc = external.ExternalRuntime()
        await proc.started(self._asked)
        # Not frozen (a departure): its processes are another container's, restarted by the kubelet behind the
        # agent's back.
        self._freezer = freezer.NoFreezer()
        return proc

    async def _initialization_type(self) -> str:
        """What the gateway made this sandbox (provisioned concurrency or on-demand); a container image's runtime
        has its environment in its container's spec, written when the pod was made: on-demand."""
        if self.config.snap_start:
            return naming.SNAP_START
        if self.config.external_runtime:
            return naming.ON_DEMAND
        return await self._session.initialization_type(timeout=INITIALIZATION_TYPE_WAIT)

    async def _spawn(self) -> asyncio.subprocess.Process:
        initialization_type = await self._initialization_type()
        self._provisioned = initialization_type == naming.PROVISIONED_CONCURRENCY
        read_fd, write_fd = os.pipe()
        self._cgroups.reset_peak()
        roots = (self._task_root, self._opt_root, self._site_root)
        try:
            proc = await launch(
                self.config, self._isolation, self.config.runtime_argv(*roots),
                uid=self._uid.uid if self._uid is not None else None, cgroups=self._cgroups, write_fd=write_fd,
                env=self.config.runtime_env(self._port, *roots, initialization_type),
            )  # fmt: skip
        finally:
            os.close(write_fd)
        self._new_life(proc.pid, read_fd, time.monotonic(), restored=False)
        return proc

    async def _restore(self) -> snapstart.ForkedRuntime | None:
        """This life's runtime forked from the version's SnapStart template; None when there is no usable one (its
        init failed, say), and the runtime is started the ordinary way."""
        if self._templates is None:
            return None
        try:
            template = await self._templates.get(self.config)
        except Exception:  # e.g. no uid left to lease for it: this sandbox still runs, initialised on demand
            log.exception("no SnapStart template for %s", self.config.instance_id)
            return None
        if not template.alive:
            return None
        read_fd, write_fd = os.pipe()
        self._cgroups.reset_peak()
        started = time.monotonic()
        try:
            proc = await template.fork(f"127.0.0.1:{self._port}", write_fd, self._cgroups)
        except snapstart.TemplateUnavailable as exc:
            log.warning("sandbox %s not restored (%s): initialising on demand", self.config.instance_id, exc)
            os.close(read_fd)
            return None
        finally:
            os.close(write_fd)
        self._new_life(proc.pid, read_fd, started, restored=True, uid=template.uid)
        return proc

    def _new_life(self, pid: int, read_fd: int, started: float, *, restored: bool, uid: int | None = None) -> None:
        """Bookkeeping of a runtime process just started (or restored) as `pid`, writing to `read_fd`'s pipe."""
        if self._cgroups.freezer is not None:
            self._freezer = freezer.CgroupFreezer(self._cgroups.freezer, v2=self._cgroups.cgroup_v2)
        else:
            self._freezer = freezer.SignalFreezer(lambda: (pid,), groups=True)  # its own session's group
        if self._capture is not None:
            self._capture.close()
        level_filter = logs.application_filter(self.config.log_format, self.config.application_log_level)
        self._capture = logs.LogCapture(read_fd, self._sink, loop=asyncio.get_running_loop(), level_filter=level_filter)
        self._spawned_at = started
        self._init_duration_ms = None
        self._served = False
        self._init_error = None
        self._restored = restored
        self._life_uid = uid if restored else self._uid.uid if self._uid is not None else None

    async def _supervise(self) -> None:
        """Start the runtime, and after every exit decide what the exit means and start it again."""
        while not self._stopping:
            proc: asyncio.subprocess.Process | external.ExternalRuntime | snapstart.ForkedRuntime
            if self.config.external_runtime:
                proc = await self._attach()
            else:
                proc = await self._restore() or await self._spawn()
            self._proc = proc
            status = await proc.wait()
            returncode: int | None = status
            if isinstance(proc, external.ExternalRuntime):
                returncode = None  # its status is the kubelet's to see
            elif isinstance(proc, asyncio.subprocess.Process):
                returncode = isolation.exit_status(proc.returncode or 0, self._isolation)
            if self._stopping:
                return
            if self._capture is not None:
                self._capture.drain()
            if self._current is not None:
                await self._finish_error(
                    "Runtime.ExitError",
                    reports.exit_error(self._current.invocation.request_id, returncode),
                    failure="Runtime.ExitError",
                )
            elif self._init_duration_ms is None:
                # Died during init: the first invocation that comes answers for it (Lambda's suppressed init).
                self._init_duration_ms = (time.monotonic() - self._spawned_at) * 1000
                error = self._init_error or (
                    "Runtime.ExitError",
                    reports.error_payload("Runtime.ExitError", reports.exit_reason(returncode)),
                )
                await self._answer_with_init_error(*error)
            else:
                log.info("runtime of %s exited while idle (%s); restarting", self.config.instance_id, returncode)

    async def _answer_with_init_error(self, error_type: str, payload: bytes) -> None:
        invocation = await self._session.next()
        self._begin(invocation)
        await self._finish_error(error_type, payload, failure=error_type)

    def _kill(self) -> None:
        proc = self._proc
        if isinstance(proc, external.ExternalRuntime):
            proc.kill()
        elif proc is not None and proc.returncode is None:
            limits.kill_group(proc.pid)
        self._freezer.thaw()  # a process in a frozen (v1) cgroup acts on SIGKILL only once thawed

    def _freeze(self) -> None:
        """Nothing of the sandbox runs until its next invocation (Lambda freezes it once the runtime is back in
        /next). What it wrote after its last answer, up to now, was that invocation's: it is in the log stream
        already, and must not open the next invocation's tail."""
        self._freezer.freeze()
        if self._served and self._capture is not None:
            self._capture.take()

    # ---- the Runtime API (called by runtime_api) -------------------------------------------------------------

    async def next_invocation(self) -> tuple[pb.Invocation, int]:
        if self._current is not None:
            raise runtime_api.InvalidState("an invocation is in progress: post its response or error first")
        if self._waiting_next:
            raise runtime_api.InvalidState("another /next is already waiting")
        if self._init_duration_ms is None:
            self._init_duration_ms = (time.monotonic() - self._spawned_at) * 1000
        self._asked.set()
        self._waiting_next = True
        if not self._session.has_work():
            self._freeze()
        try:
            invocation = await self._session.next()
        except BaseException:
            self._freezer.thaw()  # the sandbox is going away: let it act on what ends it
            raise
        finally:
            self._waiting_next = False
        return invocation, self._begin(invocation)

    def _begin(self, invocation: pb.Invocation) -> int:
        """Hand an invocation to the runtime: note START, thaw the sandbox, arm the deadline (its clock starts only
        now: time frozen is nobody's). Returns the deadline (epoch ms)."""
        # A provisioned runtime initialised ahead of its first request: Lambda shows no Init Duration for it.
        cold_ms = 0.0 if self._served or self._provisioned else (self._init_duration_ms or 0.0)
        init_ms, restore_ms = (0.0, cold_ms) if self._restored else (cold_ms, 0.0)
        self._served = True
        if self._capture is not None:
            line = reports.start_line(
                invocation.request_id, self.config.version, log_format=self.config.log_format,
                system_log_level=self.config.system_log_level, function_arn=invocation.invoked_function_arn or None,
            )  # fmt: skip
            self._capture.note(line)
        self._freezer.thaw()  # after START: what a thawed background thread writes first is this invocation's
        self._current = _InFlight(invocation, time.monotonic(), init_ms, restore_ms)
        timeout = self.config.timeout_seconds
        deadline_ms = int(time.time() * 1000 + timeout * 1000)
        self._current.timer = asyncio.get_running_loop().call_later(timeout, self._on_deadline, invocation.request_id)
        return deadline_ms

    def _on_deadline(self, request_id: str) -> None:
        if self._current is None or self._current.invocation.request_id != request_id:
            return
        self._kill()
        payload = reports.timeout_error(request_id, self.config.timeout_seconds)
        asyncio.get_running_loop().create_task(
            self._finish_error("Sandbox.Timedout", payload, failure="Sandbox.Timedout")
        )

    def _check_current(self, request_id: str) -> None:
        if self._current is None:
            raise runtime_api.InvalidState("no invocation is in progress")
        if self._current.invocation.request_id != request_id:
            raise runtime_api.UnknownRequest(request_id)

    async def post_response(self, request_id: str, body: bytes) -> None:
        self._check_current(request_id)
        report, tail = self._end()
        message = pb.AgentMessage(
            response=pb.Response(request_id=request_id, payload=body, report=report, log_tail=tail)
        )
        # The runtime's next call is /next: ask for that invocation now (it may be waiting when the runtime asks).
        await self._session.send_result(message, and_next=True)

    async def post_error(self, request_id: str, body: bytes, error_type_header: str | None) -> None:
        self._check_current(request_id)
        await self._finish_error(reports.error_type_of(body, error_type_header), body, and_next=True)

    async def post_init_error(self, body: bytes, error_type_header: str | None) -> None:
        # Init ends when the runtime first asks for work; after that (idle or mid-invocation) the emulator says 403.
        if self._init_duration_ms is not None:
            raise runtime_api.InvalidState("init already completed")
        self._init_error = (reports.error_type_of(body, error_type_header), body)
        await self._session.send_result(
            pb.AgentMessage(init_error=pb.InitError(error_type=self._init_error[0], payload=body))
        )

    async def restore_next(self) -> None:
        """SnapStart's `/runtime/restore/next`: the runtime is initialised and its before-snapshot hooks have run.
        Here the snapshot was taken before this sandbox existed (its template), so restoring is already done."""
        if not self.config.snap_start:
            raise runtime_api.InvalidState("restore/next is for SnapStart functions")
        if self._init_duration_ms is not None:
            raise runtime_api.InvalidState("init already completed")

    async def post_restore_error(self, body: bytes, error_type_header: str | None) -> None:
        """An after-restore hook failed: as an init error, the next invocation answers with it."""
        if not self.config.snap_start:
            raise runtime_api.InvalidState("restore/error is for SnapStart functions")
        await self.post_init_error(body, error_type_header)

    async def payload_too_large(self, request_id: str, size: int, *, error: bool) -> None:
        self._check_current(request_id)
        message = (
            f"{'Error' if error else 'Response'} payload size ({size} bytes) exceeded maximum allowed payload size "
            f"({runtime_api.MAX_PAYLOAD} bytes)."
        )
        await self._finish_error(
            "Function.ResponseSizeTooLarge", reports.error_payload("Function.ResponseSizeTooLarge", message)
        )

    # ---- ending an invocation --------------------------------------------------------------------------------

    def _end(self, failure: str | None = None) -> tuple[pb.Report, bytes]:
        """Close the current invocation: stop its clock, write END and REPORT, return the report and log tail.
        `failure`: the error type when the sandbox itself failed it (a timeout, a crash, init), for REPORT's status."""
        current = self._current
        assert current is not None
        self._current = None
        if current.timer is not None:
            current.timer.cancel()
        duration_ms = (time.monotonic() - current.started) * 1000
        pid = self._proc.pid if self._proc is not None else None
        measured = reports.Measurement(
            duration_ms=duration_ms,
            memory_size_mb=self.config.memory_mb,
            max_memory_used_mb=self._cgroups.max_used_mb(pid),
            init_duration_ms=current.init_duration_ms,
            restore_duration_ms=current.restore_duration_ms,
        )
        request_id = current.invocation.request_id
        tail = b""
        if self._capture is not None:
            fmt = self.config.log_format
            self._capture.note(
                reports.end_line(request_id, log_format=fmt)
                + reports.report_line(
                    request_id, measured, log_format=fmt, system_log_level=self.config.system_log_level, failure=failure
                )
            )
            log_text = self._capture.take()
            tail = reports.tail(log_text) if current.invocation.tail_logs else b""
        report = pb.Report(
            duration_ms=measured.duration_ms,
            init_duration_ms=measured.init_duration_ms,
            restore_duration_ms=measured.restore_duration_ms,
            max_memory_used_mb=measured.max_memory_used_mb,
            memory_size_mb=measured.memory_size_mb,
        )
        return report, tail

    async def _finish_error(
        self, error_type: str, payload: bytes, *, and_next: bool = False, failure: str | None = None
    ) -> None:
        if self._current is None:
            return
        request_id = self._current.invocation.request_id
        report, tail = self._end(failure)
        await self._session.send_result(
            pb.AgentMessage(
                error=pb.Error(
                    request_id=request_id, error_type=error_type, payload=payload, report=report, log_tail=tail
                )
            )
        )
