"""RewriteMap: txt (with reload), rnd (seeded), int, and the site map."""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import pytest

from dispatcher.redirect import RewriteRequest, compile_rules
from tests.redirect.support import NOW, request, run


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str, mtime: int) -> None:
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(mtime, mtime))


def lookup(tmp_path: Path, key: str, clock: FakeClock) -> str:
    program = compile_rules(
        "RewriteEngine on\nRewriteMap m txt:map.txt\nRewriteRule ^/(.*) /to/${m:$1|default}\n",
        base_dir=tmp_path,
        clock=clock,
    )
    return program.evaluate(request(f"/{key}")).path


def test_txt_map_format(tmp_path: Path) -> None:
    write(
        tmp_path / "map.txt",
        "# comment\nalpha one two\n indented ignored\nalpha second\nbeta\tb\n\nnovalue\n",
        1_000,
    )
    clock = FakeClock()
    assert lookup(tmp_path, "alpha", clock) == "/to/one"
    assert lookup(tmp_path, "beta", clock) == "/to/b"
    assert lookup(tmp_path, "indented", clock) == "/to/default"
    assert lookup(tmp_path, "novalue", clock) == "/to/default"
    assert lookup(tmp_path, "ALPHA", clock) == "/to/default"


def test_txt_map_reloads_when_the_file_changes_checked_at_most_once_a_second(
    tmp_path: Path,
) -> None:
    path = tmp_path / "map.txt"
    write(path, "k old\n", 1_000_000_000)
    clock = FakeClock()
    program = compile_rules(
        "RewriteEngine on\nRewriteMap m txt:map.txt\nRewriteRule ^/(.*) /to/${m:$1|none}\n",
        base_dir=tmp_path,
        clock=clock,
    )

    def path_for(key: str) -> str:
        return program.evaluate(request(f"/{key}")).path

    assert path_for("k") == "/to/old"
    write(path, "k new\n", 2_000_000_000)
    clock.now += 0.5
    assert path_for("k") == "/to/old"  # not checked yet
    clock.now += 0.6
    assert path_for("k") == "/to/new"
    write(path, "k newer\n", 2_000_000_000)  # same mtime, other size: still noticed
    clock.now += 1.0
    assert path_for("k") == "/to/newer"
    path.unlink()
    clock.now += 1.0
    assert path_for("k") == "/to/none"  # unreadable: an empty map, as in Apache
    write(path, "k back\n", 3_000_000_000)
    clock.now += 1.0
    assert path_for("k") == "/to/back"


def test_rnd_map_picks_uniformly_among_parts_with_a_seeded_rng(tmp_path: Path) -> None:
    write(tmp_path / "servers.txt", "pool a|b|b|b\nsingle only\n", 1)
    program = compile_rules(
        "RewriteEngine on\nRewriteMap r rnd:servers.txt\nRewriteRule ^/(\\w+) /${r:$1}\n",
        base_dir=tmp_path,
    )
    rng = random.Random(7)
    picks = Counter(program.evaluate(request("/pool"), rng=rng).path for _ in range(4000))
    assert set(picks) == {"/a", "/b"}
    assert 0.2 < picks["/a"] / 4000 < 0.3
    again = [program.evaluate(request("/pool"), rng=random.Random(3)).path for _ in range(3)]
    assert len(set(again)) == 1
    assert program.evaluate(request("/single")).path == "/only"


def test_rnd_map_empty_part_falls_back_to_the_default(tmp_path: Path) -> None:
    write(tmp_path / "m.txt", "k |\n", 1)
    program = compile_rules(
        "RewriteEngine on\nRewriteMap r rnd:m.txt\nRewriteRule ^/(\\w+) /${r:$1|dflt}\n",
        base_dir=tmp_path,
    )
    paths = {program.evaluate(request("/k"), rng=random.Random(s)).path for s in range(20)}
    assert paths == {"/dflt"}


@pytest.mark.parametrize(
    ("function", "key", "expected"),
    [
        ("tolower", "MiXeD\xc9", "mixed\xc9"),  # ASCII letters only
        ("toupper", "mixed\xe9", "MIXED\xe9"),
        ("escape", "a b&c/\xe9", "a%20b&c/%e9"),
        ("unescape", "a%2541%20b%2Fc", "a%41 b/c"),
    ],
)
def test_internal_maps(function: str, key: str, expected: str) -> None:
    rules = f"RewriteMap f int:{function}\nRewriteRule ^ - [E=out:${{f:%{{ENV:k}}}}]\n"
    assert run(rules, env={"k": key}).env["out"] == expected


def test_int_unescape_stops_at_nul() -> None:
    rules = "RewriteMap f int:unescape\nRewriteRule ^ - [E=out:${f:%{ENV:k}}]\n"
    assert run(rules, env={"k": "ab%00cd"}).env["out"] == "ab"


def test_map_keys_and_defaults_nest() -> None:
    rules = (
        "RewriteMap up int:toupper\nRewriteMap s site:\n"
        "RewriteRule ^/(\\w+) /${up:${s:$1|x-$1}}-${s:none|${up:d}}\n"
    )
    assert run(rules, "/ab").path == "/X-AB-D"


# --- the site map --------------------------------------------------------------------------


def test_site_map_is_implicit_and_yields_the_selected_base_url() -> None:
    calls: list[str] = []

    def sites(pool: str, req: RewriteRequest) -> str | None:
        calls.append(pool)
        return {"eu": "http://127.0.0.2:9001"}.get(pool)

    rules = "RewriteRule ^/(.*) ${site:eu}/$1 [R]\n"
    outcome = run(rules, "/a/b", "q=1", sites=sites)
    assert (outcome.status, outcome.location) == (302, "http://127.0.0.2:9001/a/b?q=1")
    assert calls == ["eu"]


def test_site_map_asks_once_per_pool_per_request() -> None:
    calls: list[str] = []

    def sites(pool: str, req: RewriteRequest) -> str | None:
        calls.append(pool)
        return f"http://{pool}.example"

    rules = (
        "RewriteCond ${site:eu} ^http\nRewriteRule ^ - [E=a:${site:eu}]\n"
        "RewriteRule ^ ${site:eu}/${site:us} [R]\n"
    )
    outcome = run(rules, "/", sites=sites)
    assert outcome.location == "http://eu.example/http://us.example"
    assert calls == ["eu", "us"]


def test_site_map_without_a_site_uses_the_default() -> None:
    def sites(pool: str, req: RewriteRequest) -> str | None:
        return None

    outcome = run("RewriteRule ^/(.*) ${site:eu|https://sorry.example}/$1 [R]\n", "/x", sites=sites)
    assert outcome.location == "https://sorry.example/x"


def test_site_map_without_a_site_or_default_makes_the_rule_not_apply() -> None:
    def sites(pool: str, req: RewriteRequest) -> str | None:
        return None if pool == "eu" else "http://us.example"

    rules = (
        "RewriteRule ^/(.*) ${site:eu}/$1 [R,E=tried:yes,CO=c:v:example.com]\n"
        "RewriteRule ^/(.*) ${site:us}/$1 [R]\n"
    )
    outcome = run(rules, "/x", sites=sites)
    assert outcome.location == "http://us.example/x"
    assert (dict(outcome.env), outcome.cookies) == ({}, ())
    assert run(rules, "/x").action == "none"  # no selector at all: no site anywhere


def test_site_map_failure_counts_as_no_match_for_chains() -> None:
    rules = "RewriteRule ^ ${site:eu} [C]\nRewriteRule ^ /chained\nRewriteRule ^ /after [E=a:1]\n"
    outcome = run(rules, "/x")
    assert (outcome.path, dict(outcome.env)) == ("/after", {"a": "1"})


def test_site_map_in_a_condition() -> None:
    rules = "RewriteCond ${site:eu} .\nRewriteRule ^ /has-site\n"
    assert run(rules, sites=lambda pool, req: "http://x").path == "/has-site"
    assert run(rules, sites=lambda pool, req: None).action == "none"


def test_the_selector_sees_the_request() -> None:
    seen: list[RewriteRequest] = []

    def sites(pool: str, req: RewriteRequest) -> str | None:
        seen.append(req)
        return "http://s"

    req = request("/x", "a=1")
    compile_rules("RewriteEngine on\nRewriteRule ^ ${site:p} [R]").evaluate(
        req, sites=sites, now=NOW
    )
    assert seen == [req]
