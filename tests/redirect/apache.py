"""A real Apache httpd on a loopback port, for the rewrite engine's differential test.

One `ApacheServer` serves many name-based virtual hosts from a single start: each rule set
becomes a `<VirtualHost>` named `NAME` (with `ServerAlias *.NAME`), so a whole corpus costs
one start-up. Apache listens on 127.0.0.1 only and runs from a private temporary
ServerRoot.

Text is handled as on the wire: every string carries bytes as latin-1 characters (one
character per byte), the convention of `dispatcher.redirect.RewriteRequest`.

What the driver observes for each request (verified against Apache 2.4):
- status, `Location` and `Set-Cookie` from the raw response;
- the query string after rewriting, echoed by mod_headers in `X-Webfarm-Query`
  (`%{QUERY_STRING}` is r->args, which mod_rewrite replaces);
- mod_rewrite's own trace (`LogLevel rewrite:trace5`), tagged per request through
  `ErrorLogFormat` and the request header `X-Webfarm-Case`. Its last "local path result" or
  "pass through" line is the URL-path Apache hands to the file system after rewriting;
  r->uri keeps the original path, so neither %U nor %{REQUEST_URI} shows it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from tests.ports import free_port

TAG_HEADER = "X-Webfarm-Case"
QUERY_HEADER = "X-Webfarm-Query"
MODULE_DIR = Path("/usr/lib/apache2/modules")
# module name -> shared object; any of them compiled in (`apache2 -l`) is not loaded.
MODULES = {
    "mpm_prefork_module": "mod_mpm_prefork.so",
    "authz_core_module": "mod_authz_core.so",
    "headers_module": "mod_headers.so",
    "rewrite_module": "mod_rewrite.so",
    "log_config_module": "mod_log_config.so",
    "unixd_module": "mod_unixd.so",
}
DEFAULT_HOST = "unmatched.invalid"
MAX_RESPONSE = 1 << 20
_TRACE_LINE = re.compile(r"^\[(?P<level>[^\]]*)\] \[(?P<tag>[^\]]*)\] (?P<message>.*)$")
_REWRITE_PREFIX = re.compile(r"^.*?\[rid#[0-9a-f]+/(?P<kind>[^\]]*)\] ")
_SERVED = re.compile(r"^(?P<how>local path result: |pass through )(?P<path>.*)$")
_LOG_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)")
_LOG_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"v": b"\v", b"f": b"\f"}


class ApacheStartError(Exception):
    """Apache did not come up; `log` holds its start-up output and error log."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(f"{message}\n--- apache output and error log ---\n{log}")
        self.log = log


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def find_apache() -> Path | None:
    """Debian's `apache2` binary with mod_rewrite available, or None."""
    found = shutil.which("apache2") or shutil.which("apache2", path="/usr/sbin:/usr/local/sbin")
    if found is None or not (MODULE_DIR / MODULES["rewrite_module"]).exists():
        return None
    return Path(found)


def require_apache() -> Path:
    """The apache2 binary; skips the test without it, except under CI where it fails."""
    binary = find_apache()
    if binary is None:
        reason = (
            "Apache httpd (Debian package apache2, with mod_rewrite in "
            f"{MODULE_DIR}) is not installed; `make test` installs it via .ci/system-deps"
        )
        if in_ci():
            pytest.fail(f"{reason} (CI=true: the differential test must run)")
        pytest.skip(reason)
    return binary


@dataclass(frozen=True, slots=True)
class VirtualHost:
    """A name-based virtual host (ServerName `name`, ServerAlias `*.name`).

    `directives` go inside verbatim, except that `@VHOST@` becomes `name` and `@PORT@` the
    port Apache listens on.
    """

    name: str
    directives: str


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One HTTP/1.x request exactly as it goes on the wire (headers in order, Host included)."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    protocol: str = "HTTP/1.1"
    source: str = "127.0.0.1"

    def encode(self) -> bytes:
        lines = [f"{self.method} {self.target} {self.protocol}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for n, v in self.headers if n.lower() == wanted), None)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: tuple[tuple[str, str], ...]

    def get_all(self, name: str) -> tuple[str, ...]:
        wanted = name.lower()
        return tuple(v for n, v in self.headers if n.lower() == wanted)

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class Exchange:
    """What was sent, from which client address, what came back, and mod_rewrite's trace."""

    request: HttpRequest
    client: tuple[str, int]
    response: HttpResponse
    trace: tuple[str, ...]

    @property
    def handed_on(self) -> tuple[Literal["pass", "rewrite"], str] | None:
        """How the URL went on to be served: ("pass", path) if no rule rewrote it,
        ("rewrite", path) if rules did; None if mod_rewrite answered the request itself.

        `path` is the %-decoded URL-path, as mod_rewrite logs it.
        """
        found: tuple[Literal["pass", "rewrite"], str] | None = None
        for line in self.trace:
            if line.startswith("initial: ") and (m := _SERVED.match(line[9:])):
                found = ("pass" if m["how"] == "pass through " else "rewrite", m["path"])
        return found

    @property
    def query(self) -> str:
        """The query string (r->args) after rewriting, as echoed by mod_headers."""
        return self.response.get(QUERY_HEADER) or ""


def unescape_log(text: str) -> str:
    """Undo Apache's error-log escaping (`\\xhh` for non-ASCII and control bytes, `\\\\`)."""

    def one(m: re.Match[bytes]) -> bytes:
        esc = m[1]
        if esc.startswith(b"x") and len(esc) == 3:
            return bytes([int(esc[1:], 16)])
        return _LOG_ESCAPES.get(esc, esc)

    return _LOG_ESCAPE.sub(one, text.encode("latin-1")).decode("latin-1")


def _compiled_in(binary: Path) -> set[str]:
    out = subprocess.run(
        [str(binary), "-l"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return {line.strip().removesuffix(".c") for line in out.splitlines()[1:] if line.strip()}


def _run_as() -> tuple[str, str] | None:
    """User and Group for the children when started as root (Apache refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    for user, group in (("www-data", "www-data"), ("nobody", "nogroup")):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return user, group
    raise ApacheStartError("running as root, but neither www-data nor nobody exists", "")


@dataclass(frozen=True, slots=True)
class Timeouts:
    start: float = 20.0
    stop: float = 10.0
    request: float = 5.0


def render_config(
    root: Path,
    port: int,
    vhosts: Sequence[VirtualHost],
    modules: Mapping[str, Path],
    run_as: tuple[str, str] | None,
) -> str:
    """apache2.conf for `vhosts` on 127.0.0.1:`port`, everything else inside `root`."""
    docroot = root / "htdocs"
    lines = [f'ServerRoot "{root}"']
    lines += [f'LoadModule {name} "{path}"' for name, path in modules.items()]
    if run_as is not None:
        lines += [f"User {run_as[0]}", f"Group {run_as[1]}"]
    lines += [
        f"Listen 127.0.0.1:{port}",
        f"ServerName {DEFAULT_HOST}",
        f'PidFile "{root}/run/apache2.pid"',
        f'DefaultRuntimeDir "{root}/run"',
        f'ErrorLog "{root}/logs/error.log"',
        f'ErrorLogFormat "[%l] [%{{{TAG_HEADER}}}i] %M"',
        "LogLevel warn rewrite:trace5",
        "StartServers 2",
        "MinSpareServers 1",
        "MaxSpareServers 4",
        "MaxRequestWorkers 8",
        "KeepAlive Off",
        "Timeout 10",
        # Self-referential URLs (redirects, SERVER_NAME, SERVER_PORT) come from the Host
        # header, as the dispatcher sees them.
        "UseCanonicalName Off",
        f'DocumentRoot "{docroot}"',
        "<Directory />",
        "    Require all granted",
        "</Directory>",
        f'Header always set {QUERY_HEADER} "expr=%{{QUERY_STRING}}"',
        # The first virtual host answers names no rule set claims.
        f"<VirtualHost 127.0.0.1:{port}>",
        f"    ServerName {DEFAULT_HOST}",
        "</VirtualHost>",
    ]
    for vhost in vhosts:
        lines += [
            f"<VirtualHost 127.0.0.1:{port}>",
            f"    ServerName {vhost.name}",
            f"    ServerAlias *.{vhost.name}",
            f'    DocumentRoot "{docroot}"',
            # Decode %2F like every other escape instead of refusing the request with 404
            # before mod_rewrite runs; the dispatcher has no such rule.
            "    AllowEncodedSlashes On",
            vhost.directives.replace("@VHOST@", vhost.name).replace("@PORT@", str(port)),
            "</VirtualHost>",
        ]
    return "\n".join(lines) + "\n"


def _write_tree(root: Path, files: Mapping[str, str]) -> None:
    """Create the ServerRoot, readable by the unprivileged children whatever the umask."""
    root.chmod(0o755)
    for sub in ("htdocs", "run", "logs"):
        (root / sub).mkdir()
        (root / sub).chmod(0o755)
    for name, text in files.items():
        path = (root / name).resolve()
        if not path.is_relative_to(root) or path.is_relative_to(root / "htdocs"):
            raise ValueError(f"file {name!r} must stay inside the server root, outside htdocs")
        for parent in reversed(path.relative_to(root).parents[:-1]):
            (root / parent).mkdir(exist_ok=True)
            (root / parent).chmod(0o755)
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)


def _read_response(sock: socket.socket, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < MAX_RESPONSE:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def parse_response(data: bytes) -> HttpResponse:
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status_line, *header_lines = head.split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {data[:200]!r}")
    headers = []
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return HttpResponse(int(parts[1]), tuple(headers))


@dataclass(slots=True)
class ApacheServer:
    """A running Apache; make one with `ApacheServer.running(...)`."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]
    timeouts: Timeouts
    _log_offset: int = 0
    _counter: int = 0
    _traces: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    @contextlib.contextmanager
    def running(
        cls,
        binary: Path,
        vhosts: Sequence[VirtualHost],
        files: Mapping[str, str] | None = None,
        timeouts: Timeouts | None = None,
    ) -> Iterator[ApacheServer]:
        """Write the ServerRoot, start Apache in the foreground, stop it on exit."""
        timeouts = timeouts or Timeouts()
        compiled = _compiled_in(binary)
        modules = {
            name: MODULE_DIR / so
            for name, so in MODULES.items()
            if so.removesuffix(".so") not in compiled
        }
        root = Path(tempfile.mkdtemp(prefix="webfarm-apache-")).resolve()
        try:
            _write_tree(root, files or {})
            server = cls._start(binary, root, vhosts, modules, timeouts)
            try:
                yield server
            finally:
                server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)

    @classmethod
    def _start(
        cls,
        binary: Path,
        root: Path,
        vhosts: Sequence[VirtualHost],
        modules: Mapping[str, Path],
        timeouts: Timeouts,
    ) -> ApacheServer:
        """Start on a free port; retry (bounded) if another process took the port meanwhile."""
        last: ApacheStartError | None = None
        for _ in range(3):
            port = free_port()
            conf = root / "apache2.conf"
            conf.write_text(render_config(root, port, vhosts, modules, _run_as()))
            output = (root / "logs" / "startup.log").open("wb")
            with output:
                process = subprocess.Popen(
                    [str(binary), "-f", str(conf), "-DFOREGROUND"],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"},
                )
            server = cls(root, port, process, timeouts)
            try:
                server._wait_ready()
            except ApacheStartError as exc:
                server.stop()
                last = exc
                if "Address already in use" not in exc.log:
                    raise
            else:
                return server
        raise ApacheStartError("no free port in 3 attempts", last.log if last else "")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeouts.start
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ApacheStartError(
                    f"apache2 exited with {self.process.returncode} during start-up", self.log()
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        raise ApacheStartError(
            f"apache2 did not answer on 127.0.0.1:{self.port} within {self.timeouts.start}s",
            self.log(),
        )

    def stop(self) -> None:
        """graceful-stop (SIGWINCH), then stop (SIGTERM), then SIGKILL its process group."""
        grace = self.timeouts.stop / 2
        for sig in (signal.SIGWINCH, signal.SIGTERM):
            if self.process.poll() is not None:
                return
            self.process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=grace)

    def log(self) -> str:
        """Start-up output followed by the error log (with the rewrite trace)."""
        parts = []
        for name in ("startup.log", "error.log"):
            with contextlib.suppress(OSError):
                parts.append((self.root / "logs" / name).read_text("utf-8", "replace"))
        return "\n".join(parts)

    def request(
        self,
        method: str,
        target: str,
        host: str | None,
        headers: Sequence[tuple[str, str]] = (),
        protocol: str = "HTTP/1.1",
        source: str = "127.0.0.1",
    ) -> Exchange:
        """Send one request (Connection: close) from `source`, a loopback address."""
        if not ipaddress.ip_address(source).is_loopback:
            raise ValueError(f"source address {source} is not loopback")
        self._counter += 1
        tag = f"req{self._counter}"
        sent = [("Host", host)] if host is not None else []
        sent += [*headers, (TAG_HEADER, tag), ("Connection", "close")]
        if method in {"POST", "PUT", "PATCH"}:
            sent.append(("Content-Length", "0"))
        request = HttpRequest(method, target, tuple(sent), protocol, source)
        deadline = time.monotonic() + self.timeouts.request
        with socket.create_connection(
            ("127.0.0.1", self.port), timeout=self.timeouts.request, source_address=(source, 0)
        ) as sock:
            client = sock.getsockname()
            sock.sendall(request.encode())
            data = _read_response(sock, deadline)
        response = parse_response(data)
        return Exchange(request, (client[0], client[1]), response, self._trace(tag))

    def _trace(self, tag: str) -> tuple[str, ...]:
        """mod_rewrite's trace lines for `tag`, as "initial: message" (log escaping undone).

        Apache writes them while translating the request, before it answers, so the log is
        complete for a request once its response has arrived.
        """
        with (self.root / "logs" / "error.log").open("rb") as log:
            log.seek(self._log_offset)
            data = log.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._log_offset += len(complete)
        for line in complete.decode("latin-1").splitlines():
            m = _TRACE_LINE.match(line)
            if m is None:
                continue
            message = m["message"]
            if p := _REWRITE_PREFIX.match(message):
                entry = f"{p['kind']}: {unescape_log(message[p.end() :])}"
            else:
                entry = f"[{m['level']}] {unescape_log(message)}"
            if m["tag"].startswith("req"):
                self._traces.setdefault(m["tag"], []).append(entry)
        return tuple(self._traces.pop(tag, []))
