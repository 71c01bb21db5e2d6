"""``check-config`` on hostile files: exit 0 or 2 with the key named, never a traceback or a hang.

Valid example configurations (the dispatcher's and farmnode's) are mutated one value or
table at a time: wrong types, huge and negative numbers, NaN and infinities, control
characters, NUL, empty and long strings, nested tables. Each mutant is written as TOML and
checked with the command line's own ``run(argv)`` in-process (fast), plus a few real
subprocess runs.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.__main__ import run as dispatcher_run
from dispatcher.files import printable
from farmnode.__main__ import run as farmnode_run
from tests.conftest import FARM_DISPATCHER
from tests.tomlwrite import dumps

FARMNODE = str(Path(FARM_DISPATCHER).with_name("farmnode"))

DISPATCHER_EXAMPLE = """
[dispatcher]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:8081"
database_url = "sqlite:///farm.db"
admin_tokens = ["change-me"]
secret_keys = ["k1-0123456789abcdef"]
redirect_status = 302
registry_refresh = 1.0
load_max_age = 30.0
retry_after = 30
rules = "rules.conf"
affinity = "cookie"
affinity_lifetime = 3600
cookie_domain = ".example.com"
handoff_name = "dispatcher"
workers = 1
head_timeout = 10.0

[pools.default]
policy = "weighted"
fallback = "https://sorry.example.com/"
all_down = "sorry"

[[sites]]
name = "eu"
base_url = "http://127.0.0.2:9001"
weight = 2
check = { url = "/health", expect = "OK", interval = 2.0, timeout = 1.0, rise = 2, fall = 3 }
"""

RULES = (
    "RewriteEngine on\nRewriteMap m txt:sites.map\nRewriteRule ^/eu(.*)$ ${site:default}$1 [R]\n"
)

FARMNODE_EXAMPLE = """
[node]
name = "n1"
status_listen = "127.0.0.1:9100"
log_level = "info"

[[services]]
name = "web"
protocol = "tcp"
listen = "127.0.0.1:8000"
scheduler = "wlc"
persistence = { timeout = 300, netmask = 24 }
fallback = "127.0.0.1:8099"
connect_timeout = 3.0
check = { kind = "http", url = "/", expect = "OK", interval = 2.0, timeout = 1.0 }
[[services.real]]
address = "127.0.0.1:9001"
weight = 1

[[services]]
name = "dns"
protocol = "udp"
listen = "127.0.0.1:5353"
udp_idle = 10.0
check = { kind = "agent", agent_port = 9777, interval = 1.0, timeout = 0.5 }
[[services.real]]
address = "127.0.0.1:5301"

[report]
url = "http://127.0.0.1:8081"
site = "eu"
capacity = 500
token = "change-me"
interval = 5.0

[cluster]
name = "eu-front"
priority = 100
interval = 0.2
deadtime = 1.0
key = "fuzz-cluster-key-0123456789"
[[cluster.transports]]
kind = "udp"
bind = "127.0.0.1:6940"
[[cluster.peers]]
name = "n2"
addresses = ["127.0.0.1:6941"]

[[groups]]
name = "front"
failure_timeout = 60.0
[[groups.resources]]
agent = "ipaddr"
address = "10.213.0.50/24"
interface = "eth0"
monitor_interval = 10.0
[[groups.resources]]
agent = "switch"
service = "web"
[[groups.resources]]
agent = "script"
path = "/bin/true"
start_timeout = 20.0
[[groups.resources]]
agent = "ocf"
type = "heartbeat/IPaddr2"
params = { ip = "10.213.0.51", cidr_netmask = 24 }

[[groups]]
name = "nfs"
[[groups.resources]]
agent = "nfsganesha"
export = "/srv/export"
state_dir = "/srv/nfs-state"
clients = "10.0.0.0/24"
"""

# --- mutations ----------------------------------------------------------------------------

Path_ = tuple[str | int, ...]


def paths(value: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every key path in ``value``: tables, arrays and scalars."""
    found: list[Path_] = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += paths(inner, (*prefix, index))
    return found


def dotted(path: Path_) -> str:
    """The key path as the configuration errors print it: ``sites[0].check.interval``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def replaced(doc: dict[str, Any], path: Path_, value: Any) -> dict[str, Any]:
    """``doc`` with the value at ``path`` replaced (or added: a new key of a table)."""
    new = copy.deepcopy(doc)
    target: Any = new
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return new


HOSTILE_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "a\x00b",
        "\n",
        "\r\n",
        "\x1b[31m",
        "\t",
        "x" * 10_000,
        "é",
        "\u202e",
        "http://127.0.0.1:8080",
        "127.1:8080",
        "[::1]",
        "nan",
        "-1",
        "/dev/zero",
        "/",
        "..",
        "0.0.0.0:0",
    ]
) | st.text(max_size=30)
HOSTILE_SCALARS = (
    st.sampled_from(
        [math.nan, math.inf, -math.inf, 1e-300, -1e-300, 0.0, -0.0, 1e308, 2**63 - 1, -(2**63)]
    )
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.booleans()
    | HOSTILE_TEXT
)
HOSTILE = st.recursive(
    HOSTILE_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(HOSTILE_TEXT, inner, max_size=3)
        | st.builds(lambda v: {"a": {"b": {"c": [v]}}}, inner)
    ),
    max_leaves=6,
)


def check(
    run: Callable[[list[str]], int],
    doc: dict[str, Any],
    path: Path_,
    directory: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = directory / "config.toml"
    config.write_text(dumps(doc), encoding="utf-8")
    status = run(["check-config", "--config", str(config)])
    out, err = capsys.readouterr()
    assert status in (0, 2), (status, path, out, err)
    assert "Traceback" not in err
    assert err[:-1].isprintable(), (path, err)  # nothing that drives a terminal
    if status == 2:
        assert f"invalid configuration: {config}: " in err, (path, err)
        named = err.split(f"{config}: ", 1)[1]
        # the key itself, or a key of the table it sits in (cluster.interval -> deadtime)
        table = printable(dotted(path[:-1]) if len(path) > 1 else dotted(path))
        key = printable(str(path[-1]))
        assert table in named or key in named, (path, err)


def tables(value: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every table's path (the document itself is ``()``)."""
    if isinstance(value, dict):
        return [prefix] + [p for k, v in value.items() for p in tables(v, (*prefix, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in tables(v, (*prefix, i))]
    return []


def mutants(example: dict[str, Any]) -> st.SearchStrategy[tuple[Path_, Any]]:
    """A value replaced, or a key with a hostile name added to a table."""
    replace = st.tuples(st.sampled_from(paths(example)), HOSTILE)
    add = st.builds(
        lambda table, key, value: ((*table, key), value),
        st.sampled_from(tables(example)),
        HOSTILE_TEXT,
        HOSTILE,
    )
    return replace | add


FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def dispatcher_dir(tmp_path: Path) -> Path:
    (tmp_path / "rules.conf").write_text(RULES, encoding="utf-8")
    (tmp_path / "sites.map").write_text("eu http://127.0.0.2:9001\n", encoding="utf-8")
    return tmp_path


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("FARM_", "FARMNODE_")):
            monkeypatch.delenv(name)


DISPATCHER_DOC = tomllib.loads(DISPATCHER_EXAMPLE)
FARMNODE_DOC = tomllib.loads(FARMNODE_EXAMPLE)


@pytest.mark.usefixtures("clean_environment")
def test_the_examples_are_valid(dispatcher_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for run, doc in ((dispatcher_run, DISPATCHER_DOC), (farmnode_run, FARMNODE_DOC)):
        config = dispatcher_dir / "config.toml"
        config.write_text(dumps(doc), encoding="utf-8")
        assert run(["check-config", "--config", str(config)]) == 0
        assert ": ok (" in capsys.readouterr().out


@pytest.mark.usefixtures("clean_environment")
@FUZZ
@given(mutant=mutants(DISPATCHER_DOC))
def test_dispatcher_check_config_on_mutants(
    mutant: tuple[Path_, Any], dispatcher_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, value = mutant
    check(dispatcher_run, replaced(DISPATCHER_DOC, path, value), path, dispatcher_dir, capsys)


@pytest.mark.usefixtures("clean_environment")
@FUZZ
@given(mutant=mutants(FARMNODE_DOC))
def test_farmnode_check_config_on_mutants(
    mutant: tuple[Path_, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, value = mutant
    check(farmnode_run, replaced(FARMNODE_DOC, path, value), path, tmp_path, capsys)


# --- the values the issue names, each one by hand -----------------------------------------

NAMED = [
    (dispatcher_run, DISPATCHER_DOC, ("dispatcher", "registry_refresh"), math.nan),
    (dispatcher_run, DISPATCHER_DOC, ("dispatcher", "registry_refresh"), math.inf),
    (dispatcher_run, DISPATCHER_DOC, ("dispatcher", "registry_refresh"), 1e-300),
    (dispatcher_run, DISPATCHER_DOC, ("dispatcher", "load_max_age"), math.inf),
    (dispatcher_run, DISPATCHER_DOC, ("dispatcher", "listen"), "http://127.0.0.1:8080"),
    (dispatcher_run, DISPATCHER_DOC, ("dispatcher", "database_url"), "nonsense"),
    (dispatcher_run, DISPATCHER_DOC, ("dispatcher", "database_url"), "sqlite:///a\x00b"),
    (dispatcher_run, DISPATCHER_DOC, ("dispatcher", "rules"), "rules\x00.conf"),
    (dispatcher_run, DISPATCHER_DOC, ("dispatcher", "rules"), "/dev/zero"),
    (dispatcher_run, DISPATCHER_DOC, ("sites", 0, "base_url"), "http://127.1:8080"),
    (dispatcher_run, DISPATCHER_DOC, ("sites", 0, "base_url"), "http://0x7f000001:8080"),
    (dispatcher_run, DISPATCHER_DOC, ("sites", 0, "base_url"), "http://[::ffff:127.0.0.1]:8080"),
    (dispatcher_run, DISPATCHER_DOC, ("sites", 0, "base_url"), "http://localhost.:8080"),
    (dispatcher_run, DISPATCHER_DOC, ("pools", "default", "fallback"), "http://127.1:8080/"),
    (dispatcher_run, DISPATCHER_DOC, ("sites", 0, "check", "interval"), math.nan),
    (farmnode_run, FARMNODE_DOC, ("cluster", "key"), " " * 16),
    (farmnode_run, FARMNODE_DOC, ("cluster", "interval"), math.nan),
    (farmnode_run, FARMNODE_DOC, ("cluster", "deadtime"), math.inf),
    (farmnode_run, FARMNODE_DOC, ("services", 0, "check", "interval"), 1e-9),
    (farmnode_run, FARMNODE_DOC, ("services", 1, "check"), {}),
    (farmnode_run, FARMNODE_DOC, ("report", "interval"), 1e-300),
]


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize(("run", "doc", "path", "value"), NAMED)
def test_the_values_named_in_the_issue_are_refused(
    run: Callable[[list[str]], int],
    doc: dict[str, Any],
    path: Path_,
    value: Any,
    dispatcher_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = dispatcher_dir / "config.toml"
    config.write_text(dumps(replaced(doc, path, value)), encoding="utf-8")
    assert run(["check-config", "--config", str(config)]) == 2
    assert dotted(path) in capsys.readouterr().err


@pytest.mark.usefixtures("clean_environment")
def test_a_site_check_interval_of_a_nanosecond_is_refused(
    dispatcher_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = ("sites", 0, "check", "interval")
    config = dispatcher_dir / "config.toml"
    config.write_text(dumps(replaced(DISPATCHER_DOC, path, 1e-9)), encoding="utf-8")
    assert dispatcher_run(["check-config", "--config", str(config)]) == 2
    assert "sites[0].check.interval" in capsys.readouterr().err


# --- a few real processes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("program", "doc", "path", "value"),
    [
        (FARM_DISPATCHER, DISPATCHER_DOC, ("dispatcher", "database_url"), "a\x00b"),
        (FARM_DISPATCHER, DISPATCHER_DOC, ("dispatcher", "rules"), "fifo"),
        (FARM_DISPATCHER, DISPATCHER_DOC, ("dispatcher", "registry_refresh"), math.nan),
        (FARMNODE, FARMNODE_DOC, ("cluster", "key"), " " * 16),
        (FARMNODE, FARMNODE_DOC, ("services", 1, "check"), {"interval": 1.0}),
    ],
)
def test_real_processes_exit_2_without_a_traceback(
    program: str, doc: dict[str, Any], path: Path_, value: Any, dispatcher_dir: Path
) -> None:
    os.mkfifo(dispatcher_dir / "fifo")
    config = dispatcher_dir / "config.toml"
    config.write_text(dumps(replaced(doc, path, value)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "FARMNODE_"))}
    done = subprocess.run(
        [program, "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert dotted(path) in done.stderr
