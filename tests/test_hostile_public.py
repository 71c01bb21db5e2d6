"""The hostile public corpus against a real ``farm-dispatcher serve``, byte for byte.

One dispatcher process (two loopback sites that are up, ``secret_keys``, cookie affinity,
the hand-off relay, the rules of :data:`tests.hostile.corpus.RULES`) gets every request of
the corpus (tests/hostile/corpus.py: over 500), each on its own connection, sent as raw
bytes. For every answer:

- no 5xx (the sites are up: not even the sorry page);
- every ``Location``, read the way a browser reads it (WHATWG, ``\\`` as ``/``, userinfo,
  IPv4 in any spelling; tests/hostile/browser.py), goes to a registered site, to a target a
  rule declares literally, to the dispatcher itself, or, for a rule that sends the client
  to its own Host, to the host that Host header names (or to no valid URL at all);
- every ``Set-Cookie`` is one the dispatcher or a rule's ``CO`` flag sets, with exactly the
  attributes declared;
- the server's output holds no traceback, and the connection is answered or closed.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dispatcher.session import AffinityStamp, HandoffToken
from tests.conftest import FARM_DISPATCHER, run_cli
from tests.hostile.browser import NotHttp, Origin, named_host, origin_of
from tests.hostile.corpus import (
    LITERAL_TARGETS,
    RULE_COOKIES,
    RULES,
    Case,
    Context,
    build,
    non_origin_form,
    options_asterisk,
)
from tests.ports import free_port

SECRET = "hostile-corpus-secret-key-0123456789"
HANDOFF_NAME = "dispatcher.test"
MIN_CASES = 500
#: How long one connection may take to be answered or closed.
DEADLINE = 5.0


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"OK"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@dataclass
class Farm:
    port: int
    sites: dict[str, int]
    proc: subprocess.Popen[bytes]
    log: Path
    context: Context
    origins: set[Origin] = field(default_factory=set)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _config(port: int, sites: dict[str, int], *, rules: bool) -> str:
    blocks = "".join(
        f"""
[[sites]]
name = "{name}"
base_url = "http://127.0.0.1:{site_port}"
weight = 1
check = {{ url = "/health", expect = "OK", interval = 0.5, timeout = 1.0, rise = 1, fall = 3 }}
"""
        for name, site_port in sites.items()
    )
    return f"""
[dispatcher]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:0"
database_url = "sqlite:///farm.db"
admin_tokens = ["hostile-admin-token"]
secret_keys = ["{SECRET}"]
affinity = "cookie"
handoff_name = "{HANDOFF_NAME}"
{'rules = "rules.conf"' if rules else ""}
registry_refresh = 0.5

[pools.default]
policy = "weighted"
fallback = "sorry"
{blocks}"""


def _wait_until_placing(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {log.read_text()}")
        try:
            answers = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 1)
        except OSError:
            answers = []
        if answers and answers[0].status == 302:
            return
        time.sleep(0.1)
    raise AssertionError(f"the dispatcher never placed a client: {log.read_text()}")


@contextmanager
def _running_farm(root: Path, rules: str | None) -> Iterator[Farm]:
    """A dispatcher in front of two loopback sites that are up, placing clients."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Health) for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    sites = {name: s.server_address[1] for name, s in zip(("alpha", "beta"), servers, strict=True)}
    config = root / "farm.toml"
    if rules is not None:
        (root / "rules.conf").write_text(rules)
    log = root / "serve.log"
    for attempt in range(3):  # a free port may be taken by someone else before we bind it
        port = free_port()
        config.write_text(_config(port, sites, rules=rules is not None))
        if attempt == 0:
            run_cli("db", "upgrade", "-c", str(config), check=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [FARM_DISPATCHER, "serve", "-c", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            break  # still running: it listens
        if "cannot listen" not in log.read_text():
            break  # (_wait_until_placing reports why it stopped)
    try:
        _wait_until_placing(port, proc, log)
        stamps = AffinityStamp((SECRET,))
        tokens = HandoffToken((SECRET,), lifetime=30)
        context = Context(
            port=port,
            sites=tuple(sites),
            stamp=stamps.encode,
            handoff=lambda target: tokens.encode(target, {"cart": [1, 2]}),
            handoff_name=HANDOFF_NAME,
        )
        running = Farm(port, sites, proc, log, context)
        running.origins = {Origin("http", "127.0.0.1", p) for p in sites.values()}
        running.origins |= {Origin(*target) for target in LITERAL_TARGETS}
        running.origins.add(Origin("http", "127.0.0.1", port))  # the dispatcher itself
        yield running
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module", params=["rules", "no-rules"])
def farm(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Farm]:
    """The dispatcher with the corpus's rules, and one without rules (the plain hot path)."""
    rules = RULES if request.param == "rules" else None
    with _running_farm(tmp_path_factory.mktemp("hostile"), rules) as running:
        yield running


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...]

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


def _parse(buffer: bytes) -> tuple[list[Answer], bool]:
    """The complete answers at the start of ``buffer``, and whether the last one is whole."""
    answers: list[Answer] = []
    while buffer:
        head, sep, rest = buffer.partition(b"\r\n\r\n")
        if not sep:
            return answers, False
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = tuple(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in lines[1:])
        )
        length = next((int(v) for k, v in headers if k == "content-length"), 0)
        if status in (204, 304) or 100 <= status < 200:
            length = 0
        if len(rest) < length:
            answers.append(Answer(status, headers))
            return answers, False
        if not (100 <= status < 200):
            answers.append(Answer(status, headers))
        buffer = rest[length:]
    return answers, True


def exchange(port: int, raw: bytes, responses: int, *, half_close: bool = False) -> list[Answer]:
    """Send ``raw`` on a new connection (``half_close``: then end the sending side); the
    answers, once ``responses`` came or it closed.

    Raises TimeoutError if neither happens within :data:`DEADLINE`.
    """
    deadline = time.monotonic() + DEADLINE
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        try:
            sock.sendall(raw)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before reading everything
        buffer = b""
        while True:
            answers, whole = _parse(buffer)
            if whole and len(answers) >= responses:
                return answers
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer or close within {DEADLINE} s")
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return answers
            buffer += chunk


_PAIR = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+=[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*\Z")


def problems(farm: Farm, case: Case, answers: list[Answer]) -> list[str]:
    """What is wrong with ``answers`` to ``case`` (nothing, normally)."""
    found: list[str] = []
    base = Origin("http", "127.0.0.1", farm.port)
    for answer in answers:
        if answer.status >= 500:
            found.append(f"status {answer.status}")
        for location in answer.all("location"):
            found.extend(_location_problems(farm, case, location, base))
        for cookie in answer.all("set-cookie"):
            found.extend(_cookie_problems(cookie))
    return [f"{case.id}: {problem}" for problem in found]


def _location_problems(farm: Farm, case: Case, location: str, base: Origin) -> list[str]:
    try:
        origin = origin_of(location, base)
    except NotHttp:
        return [f"Location {location!r} is not http(s)"]
    if origin in farm.origins:
        return []
    if case.echo_host is not None:
        if origin is None:
            return []  # no browser goes anywhere
        named = named_host(case.echo_host.decode("utf-8", "surrogateescape"))
        if named is not None and origin.host.rstrip(".") == named:
            return []  # the host the client itself named, as the rule declares
    return [f"Location {location!r} goes to {origin}"]


def _cookie_problems(header: str) -> list[str]:
    pair, *attributes = header.split(";")
    name = pair.partition("=")[0]
    names = [a.strip().partition("=")[0].lower() for a in attributes]
    if _PAIR.match(pair) is None:
        return [f"Set-Cookie {header!r}: not a token=cookie-octets pair"]
    if len(names) != len(set(names)):
        return [f"Set-Cookie {header!r}: an attribute twice"]
    if name in RULE_COOKIES:
        if set(names) != RULE_COOKIES[name]:
            return [f"Set-Cookie {header!r}: attributes {names}, declared {RULE_COOKIES[name]}"]
        return []
    if name == "farm_site":
        return [f"Set-Cookie {header!r}: a Domain"] if "domain" in names else []
    return [f"Set-Cookie {header!r}: a cookie nobody sets"]


def run_corpus(farm: Farm, cases: list[Case]) -> tuple[dict[str, list[Answer]], list[str]]:
    """Every case on its own connection (8 at a time); the answers and the problems."""

    def one(case: Case) -> tuple[Case, list[Answer] | str]:
        try:
            return case, exchange(farm.port, case.raw, case.responses, half_close=case.incomplete)
        except TimeoutError as exc:
            return case, str(exc)

    results: dict[str, list[Answer]] = {}
    found: list[str] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        for case, outcome in pool.map(one, cases):
            if isinstance(outcome, str):
                found.append(f"{case.id}: {outcome}")
                continue
            results[case.id] = outcome
            found.extend(problems(farm, case, outcome))
    return results, found


def _server_trouble(farm: Farm) -> list[str]:
    output = farm.output()
    return [
        line
        for line in output.splitlines()
        if "Traceback" in line or "Exception in ASGI" in line or " ERROR " in line
    ]


def test_hostile_public_requests(farm: Farm) -> None:
    cases = build(farm.context)
    assert len(cases) >= MIN_CASES
    started = time.monotonic()
    results, found = run_corpus(farm, cases)
    took = time.monotonic() - started
    assert not found, "\n".join(found[:60]) + f"\n({len(found)} problems)"
    assert not _server_trouble(farm), "\n".join(_server_trouble(farm)[:40])
    assert farm.proc.poll() is None, "the dispatcher died"
    statuses = sorted({answer.status for answers in results.values() for answer in answers})
    redirects = sum(1 for a in results.values() for answer in a if 300 <= answer.status < 400)
    print(f"{len(cases)} cases in {took:.1f} s; statuses {statuses}; {redirects} redirects")
    assert redirects > len(cases) // 2  # most were answered, not just refused


def test_non_origin_form_targets_are_refused(farm: Farm) -> None:
    cases = non_origin_form(farm.context)
    results, found = run_corpus(farm, cases)
    assert not found, "\n".join(found)
    wrong = {
        case.id: [a.status for a in results[case.id]]
        for case in cases
        if [a.status for a in results.get(case.id, [])] != [400]
    }
    assert not wrong, wrong
    options = options_asterisk(farm.context)
    answers = exchange(farm.port, options.raw, 1)
    assert [200 <= a.status < 300 for a in answers] == [True]
    assert not answers[0].all("location")
