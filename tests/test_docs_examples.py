"""The documentation as a new user reads it: every TOML example passes ``check-config``, and
every link points at a file of the repository.

A ```` ```toml ```` block is a dispatcher configuration when it has ``[dispatcher]``,
``[pools.*]``, ``[[sites]]`` or ``[[networks]]``, a farmnode configuration otherwise. A
block that shows only part of a file (``[[groups]]`` without ``[cluster]``, one
``[[services]]``) is completed with the least that makes it a whole file (a ``[node]``, a
``[cluster]``) and checked; a block that cannot stand on its own says so with
``# fragment`` on its first line (keep that rare).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from dispatcher.__main__ import run as dispatcher_run
from farmnode.__main__ import run as farmnode_run
from tests.conftest import FARM_DISPATCHER
from tests.tomlwrite import dumps

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
BLOCK = re.compile(r"^([ \t]*)```toml\n(.*?)^\1```", re.DOTALL | re.MULTILINE)
DISPATCHER_TABLES = {"dispatcher", "pools", "sites", "networks"}
CLUSTER = {
    "name": "docs",
    "key": "docs-example-cluster-key-0123456789",
    "transports": [{"kind": "udp", "bind": "127.0.0.1:6940"}],
}


def toml_blocks() -> list[Any]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text[: match.start()].count("\n") + 1
            block = textwrap.dedent(match.group(2))
            marks = (
                (pytest.mark.skip(reason="# fragment"),) if block.startswith("# fragment") else ()
            )
            found.append(pytest.param(block, id=f"{page.relative_to(ROOT)}:{line}", marks=marks))
    return found


def completed_farmnode(doc: dict[str, Any]) -> dict[str, Any]:
    """A farmnode fragment made a whole file: a [node], a [cluster] for [[groups]], a group
    around bare [[groups.resources]], and the services its switch resources name."""
    doc = {"node": {"name": "n1"}, **doc}
    groups = doc.get("groups")
    if isinstance(groups, dict):  # [[groups.resources]] alone
        doc["groups"] = [{"name": "docs", **groups}]
    if "groups" in doc and "cluster" not in doc:
        doc["cluster"] = CLUSTER
    if "services" not in doc:
        named = [
            r["service"]
            for g in doc.get("groups", [])
            for r in g.get("resources", [])
            if r.get("agent") == "switch"
        ]
        doc["services"] = [
            {
                "name": name,
                "protocol": "tcp",
                "listen": f"127.0.0.1:{8000 + i}",
                "real": [{"address": f"127.0.0.1:{9000 + i}"}],
            }
            for i, name in enumerate(named)
        ]
    return doc


def completed_dispatcher(doc: dict[str, Any]) -> dict[str, Any]:
    if "dispatcher" not in doc:
        return {"dispatcher": {"admin_tokens": ["docs-example"]}, **doc}
    return doc


@pytest.mark.parametrize("block", toml_blocks())
def test_every_toml_example_passes_check_config(
    block: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in list(os.environ):
        if name.startswith(("FARM_", "FARMNODE_")):
            monkeypatch.delenv(name)
    doc = tomllib.loads(block)
    if DISPATCHER_TABLES & doc.keys():
        run, whole = dispatcher_run, completed_dispatcher(doc)
    else:
        run, whole = farmnode_run, completed_farmnode(doc)
    config = tmp_path / "example.toml"
    config.write_text(block if whole == doc else dumps(whole), encoding="utf-8")
    status = run(["check-config", "--config", str(config)])
    assert status == 0, capsys.readouterr().err


def test_there_are_examples_to_check() -> None:
    assert len(toml_blocks()) >= 10


# --- links --------------------------------------------------------------------------------

MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE_PATH = re.compile(r"`((?:\.\./|\./)?[\w./-]+\.(?:md|py|toml|cfg|ini|sh))`")


def links(page: Path) -> list[tuple[str, Path]]:
    """(as written, resolved) for every relative link and backticked file path of ``page``."""
    text = page.read_text(encoding="utf-8")
    found = []
    for target in MARKDOWN_LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        found.append((target, (page.parent / target.split("#", 1)[0]).resolve()))
    for target in CODE_PATH.findall(text):
        if "/" not in target and target != "CHANGELOG.md":
            continue  # a bare file name (`farm.toml`, `node.toml`) is an example, not a link
        from_root, from_page = (ROOT / target).resolve(), (page.parent / target).resolve()
        found.append((target, from_root if from_root.exists() else from_page))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_points_at_a_file_in_the_repository(page: Path) -> None:
    for written, resolved in links(page):
        assert resolved.is_relative_to(ROOT), f"{written} points outside the repository"
        assert resolved.exists(), f"{written} does not exist"


# --- the quick start, as written ----------------------------------------------------------


def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    """Step 1's farm.toml, then step 2's commands (all but ``serve``, whose example sites are
    public hosts that a test must not probe) from the repository's directory."""
    text = (ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8")
    assert "make venv" in text
    (farm_toml,) = [textwrap.dedent(m.group(2)) for m in BLOCK.finditer(text)]
    (tmp_path / "farm.toml").write_text(farm_toml, encoding="utf-8")
    commands = [
        line.strip()
        for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
        for line in block.splitlines()
        if "--config farm.toml" in line and " serve " not in line
    ]
    assert len(commands) == 2, commands
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "FARMNODE_"))}
    for command in commands:
        program, *args = shlex.split(command.replace("farm.toml", str(tmp_path / "farm.toml")))
        assert program == ".venv/bin/farm-dispatcher"
        done = subprocess.run(
            [FARM_DISPATCHER, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, (command, done.stderr)
    assert (tmp_path / "farm.db").exists()  # relative to the file's directory, as it says
