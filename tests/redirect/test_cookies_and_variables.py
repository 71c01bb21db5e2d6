"""The CO flag's Set-Cookie values, exactly as Apache writes them, and every variable."""

from __future__ import annotations

import datetime

import pytest

from dispatcher.redirect.cookies import http_date, set_cookie
from tests.redirect.support import NOW, run

# NOW is Tuesday 2024-03-05 14:07:09 UTC.


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("n:v:.example.com", "n=v; path=/; domain=.example.com"),
        ("n:v:example.com:0", "n=v; path=/; domain=example.com"),
        ("n:v:example.com:abc", "n=v; path=/; domain=example.com"),
        (
            "n:v:example.com:60",
            "n=v; path=/; domain=example.com; expires=Tue, 05-Mar-2024 15:07:09 GMT",
        ),
        (
            "n:v:example.com:-1440:/app",
            "n=v; path=/app; domain=example.com; expires=Mon, 04-Mar-2024 14:07:09 GMT",
        ),
        ("n:v:d:0:/:true", "n=v; path=/; domain=d; secure"),
        ("n:v:d:0:/:secure:HttpOnly", "n=v; path=/; domain=d; secure; HttpOnly"),
        ("n:v:d:0:/:1:1", "n=v; path=/; domain=d; secure; HttpOnly"),
        ("n:v:d:0:/:0:1", "n=v; path=/; domain=d"),  # apr_pstrcat stops at the absent secure
        ("n:v:d:0:/:false:true:Strict", "n=v; path=/; domain=d; SameSite=Strict"),
        ("n:v:d:0:/:1:0:lax", "n=v; path=/; domain=d; secure; SameSite=lax"),
        ("n:v:d:0:/:1:1:false", "n=v; path=/; domain=d; secure; HttpOnly"),
        ("n:v:d:0:/:1:1:0", "n=v; path=/; domain=d; secure; HttpOnly"),
        ("n:v::d", "n=v; path=/; domain=d"),  # empty fields collapse
        (";n;a:b;d;0;/x", "n=a:b; path=/x; domain=d"),  # ";" as the separator
    ],
)
def test_cookie_formats(spec: str, expected: str) -> None:
    made = set_cookie(spec, NOW)
    assert made is not None
    assert made == (expected.split("=", 1)[0], expected)


@pytest.mark.parametrize("spec", ["", "n", "n:v", "n::", ";n;v"])
def test_incomplete_cookies_are_not_set(spec: str) -> None:
    assert set_cookie(spec, NOW) is None


def test_http_date_clamps_absurd_lifetimes() -> None:
    assert http_date(NOW, 10**12).endswith("9999 23:59:59 GMT")
    assert http_date(NOW, -(10**12)) == "Mon, 01-Jan-0001 00:00:00 GMT"
    naive_local = datetime.datetime(2024, 3, 5, 14, 7, 9)
    assert http_date(naive_local, 0).endswith("GMT")


def test_cookie_flags_through_the_engine() -> None:
    rules = (
        "RewriteRule ^/(\\w+) - [CO=sel:$1:%{HTTP_HOST}:30:/,CO=other:x:d]\n"
        "RewriteRule ^ - [CO=sel:second:d]\n"
    )
    outcome = run(rules, "/eu")
    assert outcome.cookies == (
        "sel=eu; path=/; domain=www.example.com; expires=Tue, 05-Mar-2024 14:37:09 GMT",
        "other=x; path=/; domain=d",
    )


def test_cookies_never_carry_line_breaks() -> None:
    outcome = run("RewriteRule ^/(.*) - [CO=c:$1:d]\n", "/a%0D%0AX-Evil=%20x")
    assert outcome.cookies == ("c=a%0d%0aX-Evil=%20x; path=/; domain=d",)


def test_cookies_come_with_every_action() -> None:
    for flags, action in (("F", "forbidden"), ("R", "redirect"), ("L", "rewrite")):
        outcome = run(f"RewriteRule ^/a /b [CO=c:v:d,{flags}]\n", "/a")
        assert (outcome.action, outcome.cookies) == (action, ("c=v; path=/; domain=d",))


# --- variables ----------------------------------------------------------------------------


HEADERS = {
    "user-agent": "Agent/1.0",
    "referer": "http://ref.example/p",
    "cookie": "a=1; b=2",
    "accept": "text/html",
    "forwarded": "for=192.0.2.1",
    "proxy-connection": "keep-alive",
    "x-custom": "custom value",
}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HTTP_HOST", "www.example.com:8080"),
        ("http_host", "www.example.com:8080"),
        ("HTTP_USER_AGENT", "Agent/1.0"),
        ("HTTP_REFERER", "http://ref.example/p"),
        ("HTTP_COOKIE", "a=1; b=2"),
        ("HTTP_ACCEPT", "text/html"),
        ("HTTP_FORWARDED", "for=192.0.2.1"),
        ("HTTP_PROXY_CONNECTION", "keep-alive"),
        ("HTTP:X-Custom", "custom value"),
        ("http:x-custom", "custom value"),
        ("HTTP:Host", "www.example.com:8080"),
        ("HTTP:X-Absent", ""),
        ("REQUEST_URI", "/p a/th"),
        ("REQUEST_FILENAME", "/p a/th"),
        ("SCRIPT_FILENAME", "/p a/th"),
        ("REQUEST_METHOD", "PUT"),
        ("QUERY_STRING", "a=1&b"),
        ("REMOTE_ADDR", "192.0.2.10"),
        ("REMOTE_HOST", "192.0.2.10"),
        ("CONN_REMOTE_ADDR", "192.0.2.10"),
        ("REMOTE_PORT", "40000"),
        ("HTTPS", "on"),
        ("REQUEST_SCHEME", "https"),
        ("SERVER_NAME", "www.example.com"),
        ("SERVER_PORT", "8080"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("THE_REQUEST", "PUT /p%20a//th?a=1&b HTTP/1.1"),
        ("IS_SUBREQ", "false"),
        ("IPV6", "off"),
        ("TIME", "20240305140709"),
        ("TIME_YEAR", "2024"),
        ("TIME_MON", "03"),
        ("TIME_DAY", "05"),
        ("TIME_HOUR", "14"),
        ("TIME_MIN", "07"),
        ("TIME_SEC", "09"),
        ("TIME_WDAY", "2"),
        ("ENV:given", "from caller"),
        ("ENV:absent", ""),
    ],
)
def test_variables(variable: str, value: str) -> None:
    outcome = run(
        f"RewriteRule ^ - [E=out:%{{{variable}}}]\n",
        "/p%20a//th",
        "a=1&b",
        headers=HEADERS,
        env={"given": "from caller"},
        scheme="https",
        port=8080,
        method="PUT",
    )
    assert outcome.env["out"] == value


def test_https_off_and_ipv6_client() -> None:
    rules = "RewriteRule ^ - [E=https:%{HTTPS},E=v6:%{IPV6}]\n"
    outcome = run(rules)
    assert (outcome.env["https"], outcome.env["v6"]) == ("off", "off")


def test_time_follows_the_given_clock_and_its_zone() -> None:
    tz = datetime.timezone(datetime.timedelta(hours=2))
    now = datetime.datetime(1999, 12, 31, 23, 59, 58, tzinfo=tz)
    assert run("RewriteRule ^ - [E=t:%{TIME},E=w:%{TIME_WDAY}]\n", now=now).env == {
        "t": "19991231235958",
        "w": "5",
    }
