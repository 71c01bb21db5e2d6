"""``bench.peers``: the peers ``make bench`` measures the dispatcher against start, answer
the bench's request with a 302 to a site, and their CPU is counted over all their processes.

Apache and nginx are test dependencies (``.ci/system-deps --services``), so this runs in CI.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from bench import callgrind_edge, peers
from tests.conftest import skip_or_fail


def test_the_rules_for_apache_are_the_bench_rules_plus_the_default_placement() -> None:
    text = peers.RULES.read_text(encoding="utf-8")
    rules = peers.apache_rules(text)
    assert rules.startswith(text)
    assert rules.rstrip().endswith(peers.DEFAULT_PLACEMENT)
    assert len(re.findall(r"^RewriteRule ", text, re.MULTILINE)) == 50
    assert "${site:eu|http://sorry.example.com}" in rules  # read from the rnd: map as is
    lines = dict(line.split(" ", 1) for line in peers.site_map().splitlines())
    assert lines["default"].split("|") == list(peers.SITES)
    assert {lines[r] for r in ("eu", "us", "asia")} == set(peers.SITES)


def test_nginx_config_is_one_worker_and_a_302() -> None:
    conf = peers.nginx_config(Path("/tmp/x"), 8080)
    assert "worker_processes 1;" in conf
    assert "return 302 http://127.0.0.1:9001$request_uri;" in conf
    assert "listen 127.0.0.1:8080;" in conf


@pytest.mark.parametrize("name", ["apache", "nginx"])
def test_a_peer_answers_with_a_302_to_a_site(name: str) -> None:
    if name == "apache":
        if shutil.which("apache2", path="/usr/sbin:/usr/bin") is None:
            skip_or_fail("Apache (apache2) is missing: .ci/system-deps --services installs it")
        start = peers.start_apache
    else:
        if shutil.which("nginx", path="/usr/sbin:/usr/bin") is None:
            skip_or_fail("nginx is missing: .ci/system-deps --services installs nginx-light")
        start = peers.start_nginx
    with tempfile.TemporaryDirectory(prefix="webfarm-peers-test-") as tmp:
        Path(tmp).chmod(0o755)  # Apache's children (www-data) read the rnd: map (tmp_path: 0700)
        _serve_and_check(name, start, Path(tmp))


def _serve_and_check(name: str, start: peers.Starter, root: Path) -> None:
    port = peers.free_port()
    process = start(root, port, [])
    try:
        locations = Counter(peers.check_redirect(port) for _ in range(30))
        assert set(locations) <= {f"{site}{peers.TARGET}" for site in peers.SITES}
        if name == "apache":
            assert len(locations) > 1, "the rnd: map picks among the default pool's sites"
        processes = peers.tree(process.pid)
        assert len(processes) == 2, "one parent (master) and one child (worker)"
        assert peers.cpu_seconds(process.pid) >= 0.0
    finally:
        peers.stop(process)
    assert process.returncode is not None
    assert not any(_alive(pid) for pid in processes)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent's reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("kind", ["dispatcher", "dispatcher-rules", "bare-edge"])
def test_the_callgrind_driver_answers_every_request_with_a_kept_alive_302(kind: str) -> None:
    callgrind_edge.drive(100, kind)  # (it checks the answers and the redirect counts)
    callgrind_edge.drive(0, kind)  # the baseline run: nothing to answer


def test_the_callgrind_driver_notices_a_wrong_answer() -> None:
    with pytest.raises(AssertionError):
        callgrind_edge._check(b"HTTP/1.1 302 Found\r\nconnection: close\r\n\r\n", "bare-edge")
    with pytest.raises(AssertionError):
        callgrind_edge._check(b"HTTP/1.1 302 Found\r\nlocation: http://x/\r\n\r\n", "dispatcher")
