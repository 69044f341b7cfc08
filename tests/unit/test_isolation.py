"""The sandbox's command line (pure): what is mounted where, in which order, and as whom."""

from __future__ import annotations

from pathlib import Path

from kambda.runtime.agent import isolation

BWRAP = isolation.Isolation("/usr/bin/bwrap", "/usr/bin/setpriv")


def argv(**kwargs: object) -> list[str]:
    options: dict[str, object] = {"code_dir": "/data/code/abc", "uid": 1_900_000_001, **kwargs}
    return isolation.sandbox_argv(["/venv/bin/python", "-m", "awslambdaric", "app.handler"], BWRAP, **options)  # type: ignore[arg-type]


def test_code_is_read_only_at_var_task_and_the_runtime_starts_there() -> None:
    command = argv()
    at = command.index("/var/task")
    assert command[at - 2 : at + 1] == ["--ro-bind", "/data/code/abc", "/var/task"]
    assert command[command.index("--chdir") + 1] == "/var/task"


def test_what_is_bound_under_tmp_is_mounted_after_the_private_tmp(tmp_path: Path) -> None:
    """A virtualenv under /tmp (a CI clone's) was hidden by the sandbox's own /tmp mounted over it."""
    venv = tmp_path / "venv"
    venv.mkdir()
    assert str(venv).startswith("/tmp/")
    command = argv(read_only=(str(venv),))
    tmpfs = command.index("--tmpfs")
    assert command[tmpfs + 1] == "/tmp"
    assert command.index(str(venv)) > tmpfs


def test_parents_of_bound_paths_are_traversable() -> None:
    """bwrap creates missing parents 0700, which a sandbox uid cannot enter (/var of /var/task, /root of pyenv)."""
    command = argv()
    assert command[command.index("/var") - 3 : command.index("/var") + 1] == ["--perms", "0755", "--dir", "/var"]


def test_the_runtime_drops_to_its_own_uid_without_privileges() -> None:
    command = argv()
    tail = command[command.index("--", command.index("--chdir")) + 1 :]
    assert tail[0] == "/usr/bin/setpriv" and "--reuid=1900000001" in tail and "--no-new-privs" in tail
    assert "--bounding-set=-all" in tail and tail[-4:] == ["/venv/bin/python", "-m", "awslambdaric", "app.handler"]
    assert "/usr/bin/setpriv" not in argv(uid=None)


def test_no_isolation_runs_the_runtime_as_it_is() -> None:
    plain = isolation.sandbox_argv(["/bootstrap"], isolation.Isolation(None), code_dir="/c", uid=None)
    assert plain == ["/bootstrap"]


def test_a_signal_death_inside_bwrap_is_reported_as_the_signal() -> None:
    assert isolation.exit_status(137, BWRAP) == -9
    assert isolation.exit_status(1, BWRAP) == 1
    assert isolation.exit_status(137, isolation.Isolation(None)) == 137
