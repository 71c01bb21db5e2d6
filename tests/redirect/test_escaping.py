"""Escaping: redirect targets as Apache escapes them, NE, the B flags, and header safety."""

from __future__ import annotations

import pytest

from dispatcher.redirect import RewriteRequest
from dispatcher.redirect.escape import (
    decode_request_path,
    escape_authority,
    escape_backref,
    escape_cookie_octets,
    escape_token,
    escape_uri,
    normalize_path,
    octets,
    shown,
    text_octets,
    unescape_url,
    wire_url,
)
from tests.redirect.support import location, program, request, run


def test_escape_uri_keeps_apaches_safe_set_and_writes_lower_case_hex() -> None:
    safe = "azAZ09$-_.+!*'(),:;@&=/~"
    assert escape_uri(safe) == safe
    assert escape_uri(' "#%<>?[\\]^`{|}\x00\x7f\xe9') == (
        "%20%22%23%25%3c%3e%3f%5b%5c%5d%5e%60%7b%7c%7d%00%7f%e9"
    )


def test_escape_backref_variants() -> None:
    text = "a b/c+d&\n\xc3\xa9_-.~"
    assert escape_backref(text, None, None, noplus=False, ctls=False) == (
        "a+b%2fc%2bd%26%0a%c3%a9_%2d%2e%7e"
    )
    assert escape_backref(text, None, None, noplus=True, ctls=False).startswith("a%20b")
    assert escape_backref(text, "a+", None, noplus=False, ctls=False) == (
        "a b/c%2bd&\n\xc3\xa9_-.~"
    )
    assert escape_backref(text, None, "/", noplus=False, ctls=False).startswith("a+b/c")
    assert escape_backref(text, None, None, noplus=False, ctls=True) == "a+b/c+d&%0a\xc3\xa9_-.~"


def test_unescape_url() -> None:
    assert unescape_url("a%20b%2Fc", forbid_slash=False) == ("a b/c", 0)
    assert unescape_url("a%2fc", forbid_slash=True) == ("a/c", 404)
    assert unescape_url("a%zzb%2", forbid_slash=False) == ("a%zzb%2", 400)
    assert unescape_url("a%00b", forbid_slash=False) == ("a", 404)
    assert unescape_url("plain", forbid_slash=True) == ("plain", 0)


def test_normalize_path() -> None:
    assert normalize_path("/a//b/./c/../d/.") == ("/a/b/d/", True)
    assert normalize_path("/%61%2e%2e/x") == ("/a../x", True)
    assert normalize_path("/a/%2e%2E/x") == ("/x", True)
    assert normalize_path("/..") == ("/", False)
    assert normalize_path("/a%2") == ("/a%2", False)
    assert normalize_path("/a/%2e%2e", decode=False) == ("/a/%2e%2e", True)


def test_decode_request_path() -> None:
    assert decode_request_path("/caf%C3%A9") == "/caf\xc3\xa9"
    assert decode_request_path("/caf\xe9") == "/caf\xe9"
    assert decode_request_path("/\u20ac") == "/\xe2\x82\xac"
    assert decode_request_path("relative") == 400


def test_octet_conversions() -> None:
    assert text_octets("é") == "\xc3\xa9"
    assert octets("é") == "é"
    assert octets("€") == "\xe2\x82\xac"
    assert shown("\xc3\xa9") == "é"
    assert shown("\xff") == "\\xff"


def test_wire_escaping_never_lets_controls_through() -> None:
    assert wire_url("http://h/a b\r\n\x00\x7f\xe9#") == "http://h/a b%0d%0a%00%7f%e9#"
    assert escape_cookie_octets('a; b,"c\\\r\n\x00\xe9=:') == "a%3b%20b%2c%22c%5c%0d%0a%00%e9=:"
    assert escape_token("a b=c;\xe9!#") == "a%20b%3dc%3b%e9!#"
    assert escape_authority("h.example:80[::1]%") == "h.example:80[::1]%"
    assert escape_authority("a@b/c\\d?e#f g") == "a%40b%2fc%5cd%3fe%23f%20g"


# --- redirects --------------------------------------------------------------------------------


def test_redirect_targets_are_escaped() -> None:
    assert location("RewriteRule ^/(.*) /x/$1 [R]\n", "/a%20b%23c%5Bd%C3%A9") == (
        "http://www.example.com/x/a%20b%23c%5bd%c3%a9"
    )


def test_literal_escapes_in_the_substitution_are_escaped_again_without_ne() -> None:
    # "%2" alone would be a back-reference: the substitution writes "\%20".
    rules = "RewriteRule ^/a /x\\%20y [R]\nRewriteRule ^/b /x\\%20y [R,NE]\n"
    assert location(rules, "/a") == "http://www.example.com/x%2520y"
    assert location(rules, "/b") == "http://www.example.com/x%20y"


def test_ne_keeps_the_target_but_never_controls_or_non_ascii() -> None:
    rules = "RewriteRule ^/(.*) /t/$1 [R,NE]\n"
    assert location(rules, "/a%20b%23c") == "http://www.example.com/t/a b#c"
    assert location(rules, "/a%0D%0ASet-Cookie:x%C3%A9") == (
        "http://www.example.com/t/a%0d%0aSet-Cookie:x%c3%a9"
    )


def test_an_expansion_in_the_host_part_is_escaped_up_to_its_first_slash() -> None:
    rules = "RewriteRule ^/go/(.*) http://$1 [R]\n"
    assert location(rules, "/go/evil.example%0D%0AX:%20y/p") == (
        "http://evil.example%0d%0aX:%20y/p"
    )
    assert location(rules, "/go/h") == "http://h"
    assert location(rules, "/go/h/") == "http://h/"
    assert location(rules, "/go/a@evil.example/p@q") == "http://a%40evil.example/p@q"
    assert location(rules, "/go/evil.example%5C.good/") == "http://evil.example%5c.good/"


def test_the_host_header_cannot_move_the_authority() -> None:
    rules = (
        "RewriteRule ^/h/(.*) http://%{HTTP_HOST}/$1 [R]\n"
        "RewriteRule ^/hne/(.*) http://%{HTTP_HOST}/$1 [R,NE]\n"
        "RewriteRule ^/https https://%{HTTP_HOST}%{REQUEST_URI} [R]\n"
        "RewriteRule ^/rel /local [R]\n"
    )
    compiled = program(rules)
    for host, escaped in (
        ("a@evil.example", "a%40evil.example"),
        ('a b"<>', "a%20b%22%3c%3e"),
        ("evil.example\\.good", "evil.example%5c.good"),
        ("evil.example#", "evil.example%23"),
        ("h\r\nX-Evil: 1", "h%0d%0aX-Evil:%201"),
        ("caf\xc3\xa9.example", "caf%c3%a9.example"),  # UTF-8 octets, as received
        ("[::1]:8080", "[::1]:8080"),
    ):
        assert compiled.evaluate(request("/h/x", host=host)).location == f"http://{escaped}/x"
        relative = compiled.evaluate(RewriteRequest.from_scope(_scope("/rel", host))).location
        assert relative is not None
        assert relative.startswith("http://"), relative
        authority = relative.removeprefix("http://").removesuffix("/local")
        assert escape_authority(authority) == authority, relative
        assert "@" not in authority, relative
    https = compiled.evaluate(
        request("/https/p", host="www.example.com", port=8443, scheme="https")
    )
    assert https.location == "https://www.example.com:8443/https/p"
    # no Host (HTTP/1.0), or an empty one: "https:///evil.example/" would go to evil.example
    for path in ("/h/x", "/https/evil.example/"):
        outcome = compiled.evaluate(request(path, host=""))
        assert (outcome.action, outcome.status, outcome.location) == ("status", 400, None)
    assert compiled.evaluate(request("/h/x", host="/evil.example")).status == 400
    # NE: the rule's author asked for the target as it is; still no controls, no non-ASCII
    assert compiled.evaluate(request("/hne/x", host="a@b\r\n\xc3\xa9")).location == (
        "http://a@b%0d%0a%c3%a9/x"
    )


def _scope(path: str, host: str) -> dict[str, object]:
    return {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", host.encode("utf-8"))],
        "client": ("192.0.2.1", 1),
    }


def test_a_site_base_keeps_its_authority_whatever_follows() -> None:
    compiled = program(
        "RewriteRule ^/raw(.*)$ ${site:default}$1 [R]\n"
        "RewriteRule ^/ne(.*)$ ${site:default}$1 [R,NE]\n"
    )

    def sites(pool: str, req: RewriteRequest) -> str:
        return "http://site:9001"

    for tail, expected in (
        ("@evil.example/x", "/@evil.example/x"),
        (":80@evil.example/", "/:80@evil.example/"),
        ("%5Cevil.example", "/%5cevil.example"),
        (".evil.example", "/.evil.example"),
        ("%2F%2Fevil.example", "/evil.example"),  # decoded, slashes merged
        ("/x", "/x"),
        ("", ""),
    ):
        for prefix in ("/raw", "/ne"):
            outcome = compiled.evaluate(request(prefix + tail), sites=sites)
            got = outcome.location or ""
            assert got.startswith("http://site:9001"), got
            if prefix == "/raw":
                assert got == "http://site:9001" + expected, tail
            assert got[len("http://site:9001") :][:1] in ("", "/"), got


def test_redirect_queries_are_copied_when_unchanged_and_escaped_when_new() -> None:
    rules = "RewriteRule ^/same /x [R]\nRewriteRule ^/new /x?a=%{ENV:v} [R]\n"
    assert location(rules, "/same", "a=%20b|c") == "http://www.example.com/x?a=%20b|c"
    outcome = run(rules, "/new", env={"v": "1 2|3%"})
    assert outcome.location == "http://www.example.com/x?a=1%202%7c3%25"
    assert outcome.query_string == "a=1%202%7c3%25"


def test_ne_keeps_a_new_query_too() -> None:
    assert location("RewriteRule ^/ /x?a=\\%7C [R,NE]\n", "/") == "http://www.example.com/x?a=%7C"
    assert location("RewriteRule ^/ /x?a=%7C [R,NE]\n", "/") == "http://www.example.com/x?a=C"


def test_b_flag_escapes_back_references_in_the_substitution_only() -> None:
    rules = (
        "RewriteCond %{ENV:v} (.+)\nRewriteRule ^/s/(.*) /t?q=$1&c=%1 [B]\n"
        "RewriteCond $1 ^a\\ b/c$\nRewriteRule ^/c/(.*) /ok [B]\n"
    )
    outcome = run(rules, "/s/a%20b%26c", env={"v": "x y"})
    assert outcome.query_string == "q=a+b%26c&c=x+y"
    assert run(rules, "/c/a%20b%2Fc").path == "/ok"


# A rewritten path goes on the wire escaped as a redirect to it would be: what B escaped is
# escaped again, unless NE.
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("B", "/t/a+b%252fc%2526d"),
        ("B,NE", "/t/a+b%2fc%26d"),
        ("B,BNP", "/t/a%2520b%252fc%2526d"),
        ("B=&", "/t/a%20b/c%2526d"),
        ("B,BNE=/", "/t/a+b/c%2526d"),
        ("BCTLS", "/t/a+b/c&d"),
    ],
)
def test_b_flag_forms(flags: str, expected: str) -> None:
    outcome = run(f"RewriteRule ^/(.*) /t/$1 [{flags}]\n", "/a%20b%2Fc%26d")
    assert outcome.path == expected


def test_rewritten_paths_are_encoded_for_the_wire() -> None:
    outcome = run("RewriteRule ^/(.*) /t/$1?q=%{ENV:v}\n", "/a%20b%3F", env={"v": "x#\xe9"})
    assert outcome.action == "forbidden"  # the "?" came from $1
    outcome = run("RewriteRule ^/(.*) /t/$1?q=%{ENV:v}\n", "/a%20b%25", env={"v": "x#\xe9"})
    assert (outcome.path, outcome.query_string) == ("/t/a%20b%25", "q=x%23%e9")


def test_a_site_default_built_from_the_host_is_guarded_too() -> None:
    compiled = program("RewriteRule ^/d(.*)$ ${site:eu|http://%{HTTP_HOST}}$1 [R]\n")
    outcome = compiled.evaluate(request("/d/x", host="a@evil.example"))
    assert outcome.location == "http://a%40evil.example/x"
