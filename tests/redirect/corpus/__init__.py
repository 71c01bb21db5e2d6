"""The differential corpus: rule sets, each an Apache virtual host, and the requests sent.

Every `*.toml` file in this directory holds `[[ruleset]]` tables::

    [[ruleset]]
    name = "flag-r"                 # a DNS label; the virtual host is `flag-r.test`
    rules = '''...'''               # mod_rewrite directives, as inside a <VirtualHost>
    files = { "maps/x.txt" = "k v" }  # optional; written under the ServerRoot
    [[ruleset.case]]
    id = "plain"
    target = "/old?x=1"             # the request-target, sent byte for byte
    method = "GET"                  # optional
    host = "www.@VHOST@"            # optional; default "@VHOST@:@PORT@"
    headers = { User-Agent = "x" }  # optional
    protocol = "HTTP/1.1"           # optional
    source = "127.0.0.2"            # optional loopback client address (REMOTE_ADDR)
    differs = "why"                 # optional: a documented deliberate difference

`@VHOST@` and `@PORT@` in rules and hosts become the virtual host's name and Apache's port.
Cases state no expectations: Apache is the oracle.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORPUS_DIR = Path(__file__).parent
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_RULESET_KEYS = {"name", "rules", "files", "case", "doc"}
_CASE_KEYS = {"id", "target", "method", "host", "headers", "protocol", "source", "differs"}


class CorpusError(Exception):
    """A corpus file is malformed; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class Case:
    ruleset: str
    id: str
    target: str
    method: str = "GET"
    host: str = "@VHOST@:@PORT@"
    headers: tuple[tuple[str, str], ...] = ()
    protocol: str = "HTTP/1.1"
    source: str = "127.0.0.1"
    differs: str | None = None

    @property
    def full_id(self) -> str:
        return f"{self.ruleset}/{self.id}"


@dataclass(frozen=True, slots=True)
class RuleSet:
    name: str
    rules: str
    files: tuple[tuple[str, str], ...]
    cases: tuple[Case, ...]
    source: Path

    @property
    def vhost(self) -> str:
        return f"{self.name}.test"

    def render(self, text: str, port: int) -> str:
        return text.replace("@VHOST@", self.vhost).replace("@PORT@", str(port))


def _strings(where: str, value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise CorpusError(f"{where}: expected a table of strings")
    return tuple(value.items())


def _case(where: str, ruleset: str, raw: Any) -> Case:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        raise CorpusError(f"{where}: a case needs a string `id`")
    where = f"{where} case {raw['id']!r}"
    if unknown := set(raw) - _CASE_KEYS:
        raise CorpusError(f"{where}: unknown keys {sorted(unknown)}")
    if not isinstance(raw.get("target"), str) or not raw["target"]:
        raise CorpusError(f"{where}: `target` (the request-target) is required")
    fields = {k: v for k, v in raw.items() if k != "headers"}
    if not all(isinstance(v, str) for v in fields.values()):
        raise CorpusError(f"{where}: every key but `headers` takes a string")
    headers = _strings(f"{where} headers", raw.get("headers", {}))
    return Case(ruleset=ruleset, headers=headers, **fields)


def _ruleset(path: Path, raw: Any) -> RuleSet:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise CorpusError(f"{path.name}: a [[ruleset]] needs a string `name`")
    name = raw["name"]
    where = f"{path.name} ruleset {name!r}"
    if not _NAME.match(name):
        raise CorpusError(f"{where}: the name must be a lowercase DNS label")
    if unknown := set(raw) - _RULESET_KEYS:
        raise CorpusError(f"{where}: unknown keys {sorted(unknown)}")
    if not isinstance(raw.get("rules"), str):
        raise CorpusError(f"{where}: `rules` (a string) is required")
    cases = tuple(_case(where, name, c) for c in raw.get("case", []))
    if not cases:
        raise CorpusError(f"{where}: no [[ruleset.case]]")
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise CorpusError(f"{where}: duplicate case ids")
    files = _strings(f"{where} files", raw.get("files", {}))
    return RuleSet(name, raw["rules"], files, cases, path)


def load_corpus(directory: Path = CORPUS_DIR) -> tuple[RuleSet, ...]:
    """Every rule set of every `*.toml` file, in file-name then file order."""
    rulesets: list[RuleSet] = []
    for path in sorted(directory.glob("*.toml")):
        with path.open("rb") as f:
            data = tomllib.load(f)
        rulesets += [_ruleset(path, raw) for raw in data.get("ruleset", [])]
    names = [r.name for r in rulesets]
    if dupes := {n for n in names if names.count(n) > 1}:
        raise CorpusError(f"duplicate rule set names: {sorted(dupes)}")
    files: dict[str, str] = {}
    for ruleset in rulesets:
        for file_name, text in ruleset.files:
            if files.setdefault(file_name, text) != text:
                raise CorpusError(f"{ruleset.name}: file {file_name!r} differs between rule sets")
    return tuple(rulesets)


FEATURE_KINDS = ("rule flag", "redirect form", "cond flag", "cond operator", "variable", "map type")
_ARG = re.compile(r'"[^"]*"|\S+')
_VARIABLE = re.compile(r"%\{([A-Z_]+)(:?)")
_LONG_FLAGS = {
    "redirect": "R", "last": "L", "nocase": "NC", "qsappend": "QSA", "qsdiscard": "QSD",
    "noescape": "NE", "forbidden": "F", "gone": "G", "skip": "S", "chain": "C", "next": "N",
    "env": "E", "cookie": "CO", "end": "END", "novary": "NV", "ornext": "OR",
}  # fmt: skip


def _flags(arg: str) -> list[str]:
    """Flag names of a `[...]` field, long names mapped to short ones."""
    names = []
    for flag in arg.strip("[]").split(","):
        name, sep, value = flag.partition("=")
        short = _LONG_FLAGS.get(name.lower(), name.upper())
        names.append(short)
        if short == "R":
            code = f"{value[0]}xx" if value[:1].isdigit() else value.lower()
            names.append(f"R={code}" if sep else "R")
    return names


def _operator(pattern: str) -> list[str]:
    found = ["!"] if pattern.startswith("!") else []
    pattern = pattern.removeprefix("!")
    for op in ("-eq", "-ne", "-lt", "-le", "-gt", "-ge", "<=", ">=", "<", ">", "="):
        if pattern.startswith(op):
            return [*found, op]
    return [*found, "regex"]


def corpus_features(rulesets: Iterable[RuleSet]) -> dict[str, set[str]]:
    """Which rule flags, redirect forms, condition flags and operators, variables and map
    types the rule sets use (long flag names counted as the short ones)."""
    found: dict[str, set[str]] = {kind: set() for kind in FEATURE_KINDS}
    for ruleset in rulesets:
        for line in ruleset.rules.splitlines():
            args = _ARG.findall(line)
            found["variable"].update(n + colon for n, colon in _VARIABLE.findall(line))
            if args[:1] == ["RewriteRule"] and len(args) > 3:
                flags = _flags(args[3])
                found["rule flag"].update(flags)
                found["redirect form"].update(f for f in flags if f.startswith("R"))
            elif args[:1] == ["RewriteCond"]:
                found["cond operator"].update(_operator(args[2]))
                found["cond flag"].update(_flags(args[3]) if len(args) > 3 else [])
            elif args[:1] == ["RewriteMap"]:
                kind, _, source = args[2].partition(":")
                found["map type"].add(f"int:{source}" if kind == "int" else kind)
    return found
