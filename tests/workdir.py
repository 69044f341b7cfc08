"""A directory on the test host that functions reach over loopback HTTP, the way a real function reaches a store.

Sandboxes see only their own code and a private /tmp (as on Lambda), so tests whose functions record what they did
(request ids, attempts) give them this instead of a host path: `WORK_PY` is a module for a function's code that
appends to, reads and writes files here, and the test reads the same files from disk.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

WORK_PY = """\
import os, urllib.error, urllib.request

_URL = os.environ["WORK"]


def _call(method, path, data=None):
    request = urllib.request.Request(_URL + path, data=data, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def append(name, text):
    _call("POST", "/append/" + name, text.encode())


def write(name, text):
    _call("PUT", "/files/" + name, text.encode())


def read(name):
    try:
        return _call("GET", "/files/" + name).decode()
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise
"""


class WorkDir:
    """Serves `directory` on a free 127.0.0.1 port until `stop()`."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def _target(self) -> Path | None:
                _, _, name = self.path.lstrip("/").partition("/")
                return directory / name if name and "/" not in name and name not in (".", "..") else None

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # /append/<name>
                target = self._target()
                if target is None or not self.path.startswith("/append/"):
                    return self._answer(400)
                data = self._body()
                with lock, open(target, "ab") as f:
                    f.write(data)
                self._answer(204)

            def do_PUT(self) -> None:  # /files/<name>
                target = self._target()
                if target is None:
                    return self._answer(400)
                data = self._body()
                with lock:
                    target.write_bytes(data)
                self._answer(204)

            def do_GET(self) -> None:  # /files/<name>
                target = self._target()
                if target is None:
                    return self._answer(400)
                with lock:
                    data = target.read_bytes() if target.exists() else None
                self._answer(404) if data is None else self._answer(200, data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def code_file(text: str, indent: int) -> str:
    """`text` as the body of a YAML block scalar indented by `indent` spaces."""
    pad = " " * indent
    return "\n".join(pad + line if line else "" for line in text.splitlines())


def function_manifest(name: str, code: str, **spec: Any) -> str:
    """A Function whose `app.py` is `code` (python3.11, app.handler unless `spec` says otherwise), as JSON: YAML too,
    so both `kubectl apply` and the local backend's manifest directory read it."""
    body: dict[str, Any] = {
        "apiVersion": "kambda.dev/v1alpha1",
        "kind": "Function",
        "metadata": {"name": name},
        "spec": {"runtime": "python3.11", "handler": "app.handler", "code": {"files": {"app.py": code}}, **spec},
    }
    return json.dumps(body)
