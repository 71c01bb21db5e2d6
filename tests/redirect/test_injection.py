"""Whatever a request holds, it cannot add cookie attributes or move a redirect's authority.

Property tests over hostile values (every octet, separators, escapes) put where a rule lets
request data into a ``CO`` cookie or a redirect target; the edges are tested for real in
tests/test_hostile_public.py.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.redirect import RewriteRequest
from dispatcher.redirect.escape import escape_authority
from dispatcher.redirect.target import (
    BACKREF,
    LITERAL,
    SITE,
    VARIABLE,
    join_target,
    needs_guard,
)
from tests.redirect.support import NOW, program, request

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Each rule's cookie, and exactly the attributes its text declares (``/c7/`` lets the request
#: value SameSite, and Apache writes none for an empty, ``0`` or ``false`` one).
COOKIE_RULES = {
    "/c1/": ("RewriteRule ^/c1/(.*)$ - [CO=pref:$1:example.com]", {"path", "domain"}),
    "/c2/": ("RewriteRule ^/c2/(.*)$ - [CO=life:v:$1:30:/p]", {"path", "domain", "expires"}),
    "/c3/": (
        "RewriteRule ^/c3/(.*)$ - [CO=full:$1:d.example:15:/$1:true:true:Strict]",
        {"path", "domain", "expires", "secure", "httponly", "samesite"},
    ),
    "/c4/": ("RewriteRule ^/c4/(.*)$ - [CO=;semi;$1;d;5]", {"path", "domain", "expires"}),
    "/c5/": ("RewriteRule ^/c5/(.*)$ - [CO=$1:v:d]", {"path", "domain"}),
    "/c6/": (
        "RewriteRule ^/c6/(.*)$ - [CO=h:%{HTTP_HOST}:%{HTTP_HOST}:0:%{HTTP:X-Path}]",
        {"path", "domain"},
    ),
    "/c7/": (
        "RewriteRule ^/c7/(.*)$ - [CO=s:$1:d:0:/:false:false:$1]",
        {"path", "domain", "samesite"},
    ),
}
COOKIES = program("\n".join(rule for rule, _ in COOKIE_RULES.values()) + "\n")

_TCHAR = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+\Z")
_COOKIE_OCTETS = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*\Z")
_HEADER_SAFE = re.compile(r"[\x20-\x7e]*\Z")

#: Request data that tries everything: separators, attribute syntax, escapes, any octet.
hostile = st.text(
    alphabet=st.one_of(
        st.sampled_from([";", ",", ":", " ", "=", "\r", "\n", "\0", '"', "\\", "%", "@", "/"]),
        st.characters(min_codepoint=1, max_codepoint=0xFF),
    ),
    max_size=40,
) | st.sampled_from(
    [
        "; Domain=evil.example",
        "x:evil.example:1:/:true:true:None",
        "x;evil.example;1",
        "a\r\nSet-Cookie: evil=1",
        "",
        "x, evil=1; Secure",
    ]
)


def _attributes(header: str, prefix: str) -> set[str]:
    """The attribute names of one Set-Cookie value, checking its syntax on the way."""
    assert _HEADER_SAFE.match(header), header
    pair, *attributes = header.split(";")
    name, equals, value = pair.partition("=")
    assert equals, header
    assert _TCHAR.match(name), header
    assert _COOKIE_OCTETS.match(value), header
    names = []
    for attribute in attributes:
        assert attribute.startswith(" "), header
        key, _, attribute_value = attribute[1:].partition("=")
        assert _COOKIE_OCTETS.match(attribute_value) or key.lower() == "expires", header
        names.append(key.lower())
    assert len(names) == len(set(names)), header
    return set(names)


@SETTINGS
@given(
    prefix=st.sampled_from(sorted(COOKIE_RULES)),
    value=hostile,
    host=hostile,
    x_path=hostile,
)
def test_a_request_cannot_add_cookie_attributes(
    prefix: str, value: str, host: str, x_path: str
) -> None:
    path = prefix + quote(value.encode("latin-1", "replace"), safe="")
    req = request(path, host=host, headers={"x-path": x_path})
    outcome = COOKIES.evaluate(req, now=NOW)
    if outcome.action != "none":
        # only what Apache itself answers before any rule runs: a decoded NUL, .. above /
        assert outcome.status in (400, 404), outcome
        return
    declared = COOKIE_RULES[prefix][1]
    for header in outcome.cookies:
        found = _attributes(header, prefix)
        if prefix == "/c7/" and value.lower() in ("", "0", "false"):
            found.add("samesite")
        assert found == declared, (value, header)


TARGET_RULES = program(
    "RewriteRule ^/raw(.*)$ ${site:default}$1 [R]\n"
    "RewriteRule ^/ne(.*)$ ${site:default}$1 [R,NE]\n"
    "RewriteRule ^/q(.*)$ ${site:default}?r=$1 [R]\n"
    "RewriteRule ^/host(.*)$ http://%{HTTP_HOST}/h$1 [R]\n"
    "RewriteRule ^/hostpath(.*)$ https://%{HTTP_HOST}%{REQUEST_URI} [R]\n"
    "RewriteRule ^/rel(.*)$ /r$1 [R]\n"
)
SITE_BASE = "http://site.example:9001"


def _site(pool: str, req: RewriteRequest) -> str:
    return SITE_BASE


_AUTHORITY_END = re.compile(r"[/\\?#]")


def _authority(location: str) -> str:
    """The authority of an absolute http(s) URL as a browser cuts it (``\\`` ends it too)."""
    rest = location.split("://", 1)[1]
    end = _AUTHORITY_END.search(rest)
    return rest if end is None else rest[: end.start()]


@SETTINGS
@given(
    prefix=st.sampled_from(["/raw", "/ne", "/q", "/host", "/hostpath", "/rel"]),
    tail=hostile,
    host=hostile,
)
def test_a_request_cannot_move_a_redirects_authority(prefix: str, tail: str, host: str) -> None:
    path = prefix + quote(tail.encode("latin-1", "replace"), safe="/@:.\\")
    outcome = TARGET_RULES.evaluate(request(path, host=host), sites=_site, now=NOW)
    if outcome.location is None:
        return
    location = outcome.location
    assert _HEADER_SAFE.match(location), location
    assert " " not in location or prefix == "/ne", location
    authority = _authority(location)
    if prefix in ("/raw", "/ne", "/q"):
        assert location.startswith(SITE_BASE), location
        assert authority == SITE_BASE.removeprefix("http://"), location
    else:
        # the client's own Host (the rule's declared target), escaped: no userinfo, no
        # second host, nothing that ends the authority early
        assert "@" not in authority, location
        assert escape_authority(authority) == authority, location


_LITERALS = ["/", "/x/", "?q=", "#f", "http://", "https://h", "http://h/", "h", "x", ":", "@"]


@st.composite
def _substitutions(draw: st.DrawFn) -> tuple[list[int], list[str | None], list[str]]:
    """A substitution's part kinds, its literal texts, and one expansion of every part."""
    kinds: list[int] = []
    literals: list[str | None] = []
    texts: list[str] = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from([LITERAL, BACKREF, SITE, VARIABLE]))
        if kind == LITERAL and literals and literals[-1] is not None:
            kind = BACKREF  # (literal text comes in one piece)
        kinds.append(kind)
        if kind == LITERAL:
            text = draw(st.sampled_from(_LITERALS))
            literals.append(text)
        elif kind == SITE:
            text = draw(st.sampled_from(["http://site:9001", "https://s.example", "http://s/app"]))
            literals.append(None)
        else:
            text = draw(hostile)
            literals.append(None)
        texts.append(text)
    return kinds, literals, texts


@SETTINGS
@given(_substitutions())
def test_an_unguarded_substitution_needs_no_guard(
    substitution: tuple[list[int], list[str | None], list[str]],
) -> None:
    """What :func:`needs_guard` lets through unguarded, the guards would not have changed."""
    kinds, literals, texts = substitution
    if not needs_guard(kinds, literals):
        assert join_target(texts, kinds, noescape=False) == "".join(texts)
