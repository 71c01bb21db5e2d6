"""The hostile public corpus: requests as raw bytes, every byte chosen.

:func:`build` makes the requests for one running dispatcher (its port, its sites, tokens
signed with its keys, which live only seconds): request targets, Host spellings, encodings,
forged and replayed affinity stamps and hand-off tokens, raw CR/LF, NUL, oversized parts.
:data:`RULES` is the rule file the dispatcher runs: ``${site:default}$1`` in every form,
``CO`` cookies valued by the request, ``%{HTTP_HOST}`` targets and a relative ``R``.

Targets that are not origin-form (``*``, absolute-form, authority-form, ``@evil.example/``)
are in :func:`non_origin_form`: the HTTP edge refuses them with a 400, and the test of
that is separate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

RULES = r"""RewriteEngine on
RewriteRule ^/raw(.*)$ ${site:default}$1 [R]
RewriteRule ^/ne(.*)$ ${site:default}$1 [R,NE]
RewriteRule ^/perm(.*)$ ${site:default}$1 [R=301,L]
RewriteRule ^/q(.*)$ ${site:default}/q?r=$1 [R,B]
RewriteRule ^/co/([^/]*)(.*)$ ${site:default}/co$2 \
    [R,CO=pref:$1:example.com:60:/,CO=;semi;$1;example.com;5;/p]
RewriteRule ^/cohost - [CO=h:%{HTTP_HOST}:%{HTTP_HOST}]
RewriteRule ^/hostecho(.*)$ http://%{HTTP_HOST}/echo$1 [R]
RewriteRule ^/hostpath https://%{HTTP_HOST}%{REQUEST_URI} [R,L]
RewriteRule ^/rel(.*)$ /relative$1 [R]
RewriteRule ^/ua$ ${site:default}/ua/%{HTTP_USER_AGENT} [R]
RewriteRule ^/sorry(.*)$ https://sorry.example/$1 [R=301]
RewriteRule ^/int/(.*)$ /internal/$1 [L]
RewriteRule ^/forbid - [F]
"""
#: The absolute targets the rules above declare literally: (scheme, host, port).
LITERAL_TARGETS = {("https", "sorry.example", 443)}
#: Paths whose rule sends the client to the host its own Host header names.
ECHO_PREFIXES = ("/hostecho", "/hostpath", "/rel")
#: The cookies the ``CO`` flags set, and exactly the attributes each rule declares.
RULE_COOKIES = {
    "pref": {"path", "domain", "expires"},
    "semi": {"path", "domain", "expires"},
    "h": {"path", "domain"},
}


@dataclass(frozen=True, slots=True)
class Context:
    """What the corpus needs from the dispatcher under test."""

    port: int
    sites: tuple[str, ...]
    stamp: Callable[[str], str]  # a valid affinity stamp for a site name
    handoff: Callable[[str], str]  # a valid hand-off token for a target name
    handoff_name: str


@dataclass(frozen=True, slots=True)
class Case:
    """One connection's bytes. ``echo_host``: the Host this case's Location may name (the
    rule sends clients to their own Host); ``responses``: how many answers to read;
    ``incomplete``: the bytes are no whole request (the client then stops sending)."""

    id: str
    raw: bytes
    echo_host: bytes | None = None
    responses: int = 1
    incomplete: bool = False


def request(
    target: bytes | str,
    *,
    method: bytes = b"GET",
    host: bytes | None = None,
    no_host: bool = False,
    headers: tuple[bytes, ...] = (),
    version: bytes = b"HTTP/1.1",
    body: bytes = b"",
    close: bool = True,
    port: int = 0,
) -> bytes:
    """One request's bytes; without ``host``, the Host is the dispatcher's own address."""
    if isinstance(target, str):
        target = target.encode("latin-1")
    lines = [method + b" " + target + b" " + version]
    if not no_host:
        lines.append(b"Host: " + (f"127.0.0.1:{port}".encode() if host is None else host))
    lines.extend(headers)
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


#: What follows ``/raw``, ``/ne``, ``/perm`` and ``/q``: everything that tried to move
#: the authority of ``${site:default}$1`` (or of anything else).
TAILS = (
    "@evil.example/x",
    "@evil.example",
    ":@evil.example/",
    ":80@evil.example/",
    ":9001@evil.example/",
    ":65536@evil.example",
    "\\evil.example/",
    "%5Cevil.example/",
    "%5C%5Cevil.example/",
    ".evil.example/",
    "..evil.example",
    "%2F%2Fevil.example/",
    "%2F%5Cevil.example",
    "/%2Fevil.example",
    "//evil.example",
    "/\\evil.example",
    "%40evil.example",
    "%2540evil.example",
    "evil.example",
    "?x=@evil.example",
    "%3F@evil.example",
    "%23@evil.example",
    "#@evil.example",
    "%00@evil.example",
    "%0D%0ALocation:%20http://evil.example/",
    "%0d%0aSet-Cookie:%20farm_site=forged",
    "%0A%0Devil",
    "%E2%80%A8@evil.example",
    "%C0%AE%C0%AE/",
    "%ff@evil",
    "%",
    "%zz@evil.example",
    "%2e%2e/%2e%2e/evil",
    "/../../evil.example",
    ";@evil.example",
    "%09@evil.example",
    "%20@evil.example",
    "%u0040evil.example",
    "%252F%252Fevil.example",
    "[::1]@evil.example",
    "%5B::1%5D",
    "&@evil.example",
    "$@evil.example",
    "'@evil.example",
    "%22@evil.example",
    "%3Cscript%3E",
    "@%65vil.example",
    ":password@evil.example/",
    "%EF%BC%A0evil.example",
    "\u00e9@evil.example",
)
#: Host header values, as bytes.
HOSTS = (
    b"evil.example",
    b"EVIL.EXAMPLE",
    b"evil.example.",
    b"evil.example..",
    b"evil.example:80",
    b"evil.example:8080",
    b"evil.example:99999",
    b"evil.example:",
    b"evil.example:abc",
    b"evil.example:80:81",
    b"a@evil.example",
    b"user:pass@evil.example",
    b"good.example@evil.example",
    b"evil.example\\.good.example",
    b"evil.example/.good.example",
    b"evil.example?.good.example",
    b"evil.example#.good.example",
    b"evil.example%2F.good",
    b"evil.example%40good",
    b"[::1]",
    b"[::1]:8080",
    b"[::ffff:127.0.0.1]",
    b"[fe80::1%25eth0]",
    b"[::1",
    b"::1",
    b"127.1",
    b"0x7f000001",
    b"2130706433",
    b"0177.0.0.1",
    b"caf\xc3\xa9.example",
    b"\xff\xfe",
    b"xn--caf-dma.example",
    b'evil.example"',
    b"<evil.example>",
    b"evil example",
    b"evil.example, good.example",
    b"",
    b"`evil`",
    b"evil.example;x=1",
    b"%65vil.example",
    b"a" * 300 + b".example",
    b"evil.example\t",
)


def build(ctx: Context) -> list[Case]:
    """Every origin-form case (well over 500)."""
    cases: list[Case] = []
    for group in (_tails, _hosts, _cookies, _headers, _stamps, _handoffs, _encodings, _targets):
        cases.extend(group(ctx))
    ids = [case.id for case in cases]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    return cases


def _tails(ctx: Context) -> Iterator[Case]:
    req = partial(request, port=ctx.port)
    for prefix in ("/raw", "/ne", "/perm", "/q"):
        for i, tail in enumerate(TAILS):
            target = (prefix + tail).encode("utf-8")
            yield Case(f"tail{prefix}/{i}", req(target))


def _hosts(ctx: Context) -> Iterator[Case]:
    req = partial(request, port=ctx.port)
    for i, host in enumerate(HOSTS):
        for prefix in ECHO_PREFIXES:
            raw = req(f"{prefix}/p@x", host=host)
            yield Case(f"host{prefix}/{i}", raw, echo_host=host)
        yield Case(f"host/raw/{i}", req("/raw@evil.example/", host=host))
        yield Case(f"host/plain/{i}", req("/", host=host))
        yield Case(f"host/cohost/{i}", req("/cohost", host=host))
    # a Host header twice, and none at all
    for prefix in ECHO_PREFIXES:
        two = req(f"{prefix}/x", host=b"evil.example", headers=(b"Host: good.example",))
        yield Case(f"host-twice{prefix}", two, echo_host=b"evil.example, good.example")
        yield Case(f"host-none{prefix}", req(f"{prefix}/x", no_host=True), echo_host=b"")
        yield Case(
            f"host-none-1.0{prefix}",
            req(f"{prefix}/x", no_host=True, version=b"HTTP/1.0"),
            echo_host=b"",
        )


def _cookies(ctx: Context) -> Iterator[Case]:
    req = partial(request, port=ctx.port)
    values = (
        "%3B%20Domain%3Devil.example",
        "x%3B%20Secure%3B%20HttpOnly",
        "x:evil.example:1:/:true:true:None",
        "x;evil.example;1",
        "x%0D%0ASet-Cookie:%20evil=1",
        "x%2C%20evil=1",
        "%22quoted%22",
        "%5C",
        "%C3%A9t%C3%A9",
        "",
        "a%20b",
        "x=y",
        "%3A%3A%3A",
        "%3B%3B%3B",
        "%00",
        "a" * 3000,
    )
    for i, value in enumerate(values):
        yield Case(f"co/{i}", req(f"/co/{value}/rest"))


def _headers(ctx: Context) -> Iterator[Case]:
    req = partial(request, port=ctx.port)
    weird = (
        b"X-Test: a\rb",
        b"X-Test: a\nInjected: 1",
        b"X-Test: a\r\n Folded: 1",
        b"X-Test:\x00nul",
        b"X-Test: \x7f\x80\xff",
        b"User-Agent: evil\r\nLocation: http://evil.example/",
        b"User-Agent: " + b"%0d%0aLocation:%20http://evil.example",
        b"User-Agent: @evil.example/",
        b"User-Agent: ../../evil",
        b"User-Agent: \xc3\xa9\xe2\x80\xa8",
        b"Bad Header: x",
        b": empty-name",
        b"NoColon",
        b"X-Long: " + b"a" * 60000,
        b"Cookie: " + b"farm_site=" + b"a" * 8000,
        b"Cookie: farm_site=\x00\x01",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5",
        b"Content-Length: -1",
        b"Content-Length: 1, 2",
        b"Expect: 100-continue",
        b"Upgrade: websocket\r\nConnection: Upgrade",
        b"X-Forwarded-Host: evil.example",
        b"X-Forwarded-Proto: javascript",
        b"Forwarded: host=evil.example;proto=https",
    )
    for i, header in enumerate(weird):
        for target in ("/raw/x", "/ua", "/hostecho/x", "/"):
            echo = b"" if target.startswith(ECHO_PREFIXES) else None
            yield Case(f"header/{i}{target}", req(target, headers=(header,)), echo)
    many = tuple(b"X-H%d: v" % i for i in range(300))
    yield Case("header/300-lines", req("/raw/x", headers=many))
    yield Case("header/lf-only", b"GET /raw/x HTTP/1.1\nHost: h\nConnection: close\n\n")
    yield Case("header/cr-only", b"GET /raw/x HTTP/1.1\rHost: h\r\r", incomplete=True)
    yield Case("header/bare-lf-in-line", b"GET /raw/x\nHTTP/1.1\r\nHost: h\r\n\r\n")


def _stamps(ctx: Context) -> Iterator[Case]:
    req = partial(request, port=ctx.port)
    valid = {site: ctx.stamp(site) for site in ctx.sites}
    first = ctx.sites[0]
    forged = (
        "garbage",
        "",
        valid[first][:-4] + "AAAA",
        valid[first] + "x",
        valid[first].upper(),
        ctx.stamp("no-such-site"),
        ctx.stamp("evil.example"),
        ctx.stamp("@evil.example"),
        ctx.stamp("../../x"),
        "a" * 5000,
        "%00",
        valid[first] + "; farm_site=" + valid[ctx.sites[1]],
        '"' + valid[first] + '"',
    )
    stamps = [*valid.values(), *forged]
    for i, stamp in enumerate(stamps):
        for target in ("/", "/raw@evil.example/", "/int/x", "/perm%5Cevil"):
            cookie = b"Cookie: farm_site=" + stamp.encode("latin-1")
            yield Case(f"stamp/{i}{target}", req(target, headers=(cookie,)))
    # the same valid stamp twice on one connection (a replay is a returning client)
    again = req("/", headers=(b"Cookie: farm_site=" + valid[first].encode(),), close=False)
    yield Case("stamp/replayed", again + req("/"), responses=2)


def _handoffs(ctx: Context) -> Iterator[Case]:
    req = partial(request, port=ctx.port)
    fresh = [ctx.handoff(ctx.handoff_name) for _ in range(6)]
    bad = (
        "garbage",
        "",
        fresh[0][:-3] + "AAA",
        ctx.handoff(ctx.sites[0]),  # bound to a site, not to the dispatcher
        ctx.handoff("evil.example"),
        "a" * 10000,
        "%00%0d%0a",
        "..%2F..%2F",
    )
    for i, token in enumerate(bad):
        for target in ("/", "/raw@evil.example/", "/hostecho/x", "/sorry/x"):
            raw = req(f"{target}?farm_handoff={token}&a=1")
            echo = b"" if target.startswith(ECHO_PREFIXES) else None
            yield Case(f"handoff/{i}{target}", raw, echo_host=echo)
    # a valid token, then the same token again on the same connection: a replay
    for i, target in enumerate(("/", "/raw@evil.example/", "/int/x", "/perm/x")):
        token = fresh[i]
        once = req(f"{target}?farm_handoff={token}", close=False)
        twice = req(f"{target}?farm_handoff={token}")
        yield Case(f"handoff/replay{target}", once + twice, None, 2)
    token = fresh[4]
    yield Case("handoff/twice-in-query", req(f"/?farm_handoff={token}&farm_handoff={token}"))
    yield Case("handoff/with-evil-host", req(f"/?farm_handoff={fresh[5]}", host=b"evil.example"))
    yield Case("handoff/empty", req("/?farm_handoff=&farm_handoff"))


def _encodings(ctx: Context) -> Iterator[Case]:
    req = partial(request, port=ctx.port)
    bodies = (
        (b"Content-Length: 5", b"hello"),
        (b"Transfer-Encoding: chunked", b"5\r\nhello\r\n0\r\n\r\n"),
        (b"Transfer-Encoding: chunked", b"zz\r\nhello\r\n0\r\n\r\n"),
        (b"Transfer-Encoding: gzip, chunked", b"0\r\n\r\n"),
        (b"Transfer-Encoding: identity", b""),
        (b"Content-Length: 3", b"hello"),
        (b"Content-Encoding: gzip\r\nContent-Length: 4", b"\x1f\x8b\x08\x00"),
    )
    for i, (header, body) in enumerate(bodies):
        for method in (b"POST", b"PUT", b"GET"):
            raw = req("/raw@evil.example/", method=method, headers=(header,), body=body)
            yield Case(f"body/{i}/{method.decode()}", raw)
    methods = (b"HEAD", b"OPTIONS", b"DELETE", b"TRACE", b"get", b"G\x00T", b"BREW", b"A" * 100)
    for i, method in enumerate(methods):
        yield Case(f"method/{i}", req("/raw@evil.example/", method=method))
    versions = (b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.2", b"http/1.1", b"HTTP/1.1 x", b"")
    for i, version in enumerate(versions):
        yield Case(f"version/{i}", req("/raw@evil.example/", version=version))
    yield Case("http09", b"GET /raw@evil.example/\r\n\r\n")
    yield Case("empty", b"\r\n\r\n", incomplete=True)
    yield Case("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", incomplete=True)
    yield Case("half-head", b"GET /raw@evil.example/ HTTP/1.1\r\nHost: x\r\n", incomplete=True)
    pipelined = req("/raw@evil.example/", close=False) + req("/ne@x")
    yield Case("pipelined", pipelined, responses=2)


def _targets(ctx: Context) -> Iterator[Case]:
    """Origin-form targets that are odd in themselves."""
    req = partial(request, port=ctx.port)
    targets = (
        "//evil.example",
        "//evil.example/",
        "///evil.example",
        "/\\evil.example",
        "/\\\\evil.example",
        "/%5Cevil.example",
        "/%2F%2Fevil.example",
        "/.%2E/evil",
        "/..",
        "/../",
        "/%2e%2e%2f",
        "/%00",
        "/a%0d%0aLocation:%20http://evil.example",
        "/\x00",
        "/a\rb",
        "/\x7f",
        "/\x80\xff",
        "/caf\u00e9",
        "/?@evil.example",
        "/?#@evil.example",
        "/#@evil.example",
        "/?x=" + "a" * 7000,
        "/" + "a" * 9000,
        "/" + "/" * 4000,
        "/" + "%2F" * 3000,
        "/@evil.example",
        "/:@evil.example",
        "/int/@evil.example",
        "/int/%2F%2Fevil.example",
        "/int/..%2F..%2Fevil",
        "/forbid@evil.example",
        "/sorry@evil.example/",
        "/sorry%2F%2Fevil.example",
        "/sorry/..%5Cevil",
        "/ua",
        "/raw%40evil.example",
        "/%72aw@evil.example",
        "/RAW@evil.example",
        "/raw;@evil.example",
        "/raw?@evil.example",
    )
    for i, target in enumerate(targets):
        yield Case(f"target/{i}", req(target.encode("utf-8", "surrogateescape")))
    yield Case("target/overlong", req("/" + "x" * 70000))


def non_origin_form(ctx: Context) -> list[Case]:
    """Targets that are not origin-form: the HTTP edge answers each with a 400 (and
    ``OPTIONS *`` with its own answer)."""
    req = partial(request, port=ctx.port)
    targets = (
        (b"GET", "*"),
        (b"GET", "*@evil.example/"),
        (b"GET", "*@evil.example"),
        (b"GET", "@evil.example/"),
        (b"GET", "@evil.example"),
        (b"GET", ":@evil.example/"),
        (b"GET", "evil.example/x"),
        (b"GET", "evil.example:443"),
        (b"CONNECT", "evil.example:443"),
        (b"GET", "http://evil.example/"),
        (b"GET", "http://evil.example"),
        (b"GET", "https://evil.example/raw@evil.example"),
        (b"GET", "HTTP://EVIL.EXAMPLE/"),
        (b"GET", "http:evil.example"),
        (b"GET", "\\evil.example"),
        (b"GET", "\\\\evil.example"),
        (b"GET", ".evil.example"),
        (b"GET", "?x=1"),
        (b"GET", "%2F%2Fevil.example"),
        (b"GET", "%40evil.example"),
        (b"HEAD", "*@evil.example/"),
        (b"POST", "@evil.example/"),
        (b"OPTIONS", "@evil.example/"),
        (b"OPTIONS", "http://evil.example/"),
    )
    return [
        Case(f"non-origin/{i}", req(target, method=method))
        for i, (method, target) in enumerate(targets)
    ]


def options_asterisk(ctx: Context) -> Case:
    """``OPTIONS *``: a request about the server itself, answered as such."""
    req = partial(request, port=ctx.port)
    return Case("options-asterisk", req("*", method=b"OPTIONS"))
