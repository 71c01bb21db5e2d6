"""The admin API described as OpenAPI 3.1, served at ``GET /api/v1/openapi.json``.

The document is exact: what it calls valid, the API accepts (unless the state forbids it:
a site that exists, or does not), and what it calls invalid, the API refuses with a 4xx.
Two string formats are our own: ``http-url`` (an absolute http(s) URL with a host, no
query, fragment or credentials, ASCII without spaces or controls) and ``check-url``
(a path starting with ``/``, or an ``http-url``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dispatcher import __version__
from dispatcher.audit_input import AUDIT_PATH, AUDIT_SCHEMAS
from dispatcher.placement.countries import COUNTRIES
from dispatcher.placement.engine import VERDICTS
from dispatcher.placement.rtt import MAX_REPORT_ENTRIES, MAX_RTT, MAX_SAMPLES, NETWORK_PATTERN

NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
# the start of what the two formats say, as far as a pattern can (the formats are exact)
URL_PATTERN = "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#@:\\s]"
CHECK_URL_PATTERN = "^(/|https?://[^/?#@:\\s])"
HTTP_NAME_PATTERN = "^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$"
_ERROR = {"$ref": "#/components/responses/Error"}
_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": NAME_PATTERN},
}


def _json(schema_ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}


def _ok(description: str, schema_ref: str) -> dict[str, Any]:
    return {"description": description, "content": _json(schema_ref)}


def _op(
    summary: str, responses: dict[str, Any], body: str | None = None, *, store: bool = True
) -> dict[str, Any]:
    """An operation; ``store``: it reads or writes the database (503 when that fails)."""
    answers = {**responses, "4XX": _ERROR}
    if store:
        answers["503"] = _ERROR
    op: dict[str, Any] = {"summary": summary, "responses": answers}
    if body:
        op["requestBody"] = {"required": True, "content": _json(body)}
    return op


def _health(summary: str) -> dict[str, Any]:
    """``/livez`` or ``/readyz``: no token, 200 or 503 with the conditions."""
    return {
        "summary": summary,
        "security": [],
        "responses": {
            "200": _ok("every condition holds", "Verdict"),
            "503": _ok("a condition fails (named in the body)", "Verdict"),
            "4XX": _ERROR,
        },
    }


def openapi_document(pools: Iterable[str] = ()) -> dict[str, Any]:
    """The document; ``pools`` are the configured pool names (a site's ``pool`` is one)."""
    pool_names = sorted(pools)
    pool: dict[str, Any] = (
        {"type": "string", "enum": pool_names}
        if pool_names
        else {"type": "string", "pattern": NAME_PATTERN}
    )
    check = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "url": {
                "type": "string",
                "format": "check-url",
                "pattern": CHECK_URL_PATTERN,
                "maxLength": 2048,
                "description": "path under base_url (starting with /), or an absolute URL",
            },
            "expect": {"type": "string", "maxLength": 1024, "pattern": "^[^\\x00]*$"},
            "interval": {"type": "number", "minimum": 0.1, "maximum": 3600},
            "timeout": {"type": "number", "minimum": 0.05, "maximum": 3600},
            "rise": {"type": "integer", "minimum": 1, "maximum": 100},
            "fall": {"type": "integer", "minimum": 1, "maximum": 100},
        },
    }
    site_fields = {
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "base_url": {
            "type": "string",
            "format": "http-url",
            "pattern": URL_PATTERN,
            "maxLength": 2048,
            "description": "absolute http(s) URL with a host; not the dispatcher itself",
        },
        "pool": pool,
        "weight": {"type": "integer", "minimum": 0, "maximum": 10000},
        "drained": {"type": "boolean"},
        "check": {"$ref": "#/components/schemas/Check"},
        "region": {
            "type": ["string", "null"],
            "pattern": NAME_PATTERN,
            "description": "where the site is, for the nearest policy (compared without case;"
            " shown in lower case); null: none",
        },
        "country": {
            "enum": [*sorted(COUNTRIES), None],
            "description": "ISO 3166-1 alpha-2 (lower case accepted); null: none",
        },
        "coordinates": {
            "type": ["array", "null"],
            "prefixItems": [
                {"type": "number", "minimum": -90, "maximum": 90},
                {"type": "number", "minimum": -180, "maximum": 180},
            ],
            "items": False,
            "minItems": 2,
            "description": "[latitude, longitude] in degrees; null: none",
        },
        "addresses": {
            "type": "array",
            "maxItems": 16,
            "uniqueItems": True,
            "items": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
            "description": "what the DNS front answers for the site (default: the base"
            " URL's host when it is an IP literal)",
        },
    }
    site_changes = {k: v for k, v in site_fields.items() if k != "name"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "webfarm dispatcher admin API",
            "version": __version__,
            "description": "Every answer carries X-Request-Id: the client's own when it is"
            " 1-128 characters of letters, digits and -._:+/=@, else a new one; the"
            " request's log lines carry it too.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/sites": {
                "get": _op(
                    "List sites with their state", {"200": _ok("sites", "SiteList")}, store=False
                ),
                "post": _op("Register a site", {"201": _ok("created", "Site")}, "NewSite"),
            },
            "/api/v1/sites/{name}": {
                "parameters": [_NAME],
                "get": _op(
                    "One site with its state", {"200": _ok("the site", "Site")}, store=False
                ),
                "patch": _op("Change a site", {"200": _ok("changed", "Site")}, "SiteChanges"),
                "delete": _op("Remove a site", {"204": {"description": "removed"}}),
            },
            "/api/v1/sites/{name}/drain": {
                "parameters": [_NAME],
                "post": _op("Send no new clients to a site", {"200": _ok("drained", "Site")}),
            },
            "/api/v1/sites/{name}/undrain": {
                "parameters": [_NAME],
                "post": _op("Send clients to a site again", {"200": _ok("undrained", "Site")}),
            },
            "/api/v1/sites/{name}/load": {
                "parameters": [_NAME],
                "put": _op("Report a site's load", {"200": _ok("stored", "Load")}, "LoadIn"),
            },
            "/api/v1/status": {
                "get": _op(
                    "Pools and sites, health, load, redirects",
                    {"200": _ok("status", "Status")},
                    store=False,
                ),
            },
            "/api/v1/rules": {
                "get": {
                    "summary": "The rewrite rules in force",
                    "responses": {
                        "200": {
                            "description": "the rules (X-Rules-Origin says where from)",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "4XX": _ERROR,
                        "503": _ERROR,
                    },
                },
                "put": {
                    "summary": "Replace the rules (validated, swapped atomically, stored)",
                    "description": "Rule text (mod_rewrite syntax) that does not parse is a 400"
                    " naming the line; an empty body is a 400 (PUT 'RewriteEngine off' to turn"
                    " the rules off).",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "text/plain": {
                                "schema": {"type": "string", "minLength": 1},
                                "example": "RewriteEngine on\nRewriteRule ^/old$ /new [R=301]\n",
                            }
                        },
                    },
                    "responses": {
                        "200": _ok("in force", "RulesIn"),
                        "4XX": _ERROR,
                        "503": _ERROR,
                    },
                },
            },
            "/api/v1/explain": {
                "post": _op(
                    "What a client asking for a URL would get, rule by rule; or (the dns"
                    " variant) what a resolver asking the DNS front would be told",
                    {"200": _ok("the explanation", "Explained")},
                    "ExplainBody",
                    store=False,
                ),
            },
            "/api/v1/audit": AUDIT_PATH,
            "/livez": {
                "get": _health(
                    "Is the dispatcher alive: the control process and its workers run (no"
                    " token; HEAD too)"
                ),
            },
            "/readyz": {
                "get": _health(
                    "Should it get traffic: a snapshot, the first probe round, the public"
                    " listener open, the database answered within registry_refresh x 10 (no"
                    " token; HEAD too)"
                ),
            },
            "/api/v1/openapi.json": {
                "get": _op(
                    "This document",
                    {
                        "200": {
                            "description": "ok",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                    store=False,
                ),
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {"description": "an error", "content": _json("Error")},
            },
            "schemas": {
                **AUDIT_SCHEMAS,
                "Check": check,
                "NewSite": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "base_url"],
                    "properties": site_fields,
                },
                "SiteChanges": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": site_changes,
                },
                "Site": {
                    "type": "object",
                    "properties": {
                        **site_fields,
                        "health": {"enum": ["unknown", "up", "down"]},
                        "eligible": {"type": "boolean"},
                        "last_probe": {"type": ["object", "null"]},
                        "load": {"type": ["object", "null"]},
                        "redirects": {"type": "integer"},
                    },
                },
                "SiteList": {
                    "type": "object",
                    "properties": {
                        "sites": {"type": "array", "items": {"$ref": "#/components/schemas/Site"}}
                    },
                },
                "LoadIn": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["load"],
                    "properties": {
                        "load": {"type": "number", "minimum": 0, "maximum": 1},
                        "connections": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
                        "rtt": {
                            "description": "the RTT the site's switch learned per client"
                            " network (each network listed once)",
                            "type": "array",
                            "maxItems": MAX_REPORT_ENTRIES,
                            "items": {"$ref": "#/components/schemas/RttEntry"},
                        },
                    },
                },
                "RttEntry": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["network", "rtt", "samples"],
                    "properties": {
                        "network": {
                            "type": "string",
                            "pattern": NETWORK_PATTERN,
                            "description": "canonical /24 (IPv4) or /48 (IPv6)",
                        },
                        "rtt": {"type": "number", "minimum": 0, "maximum": MAX_RTT},
                        "samples": {"type": "integer", "minimum": 1, "maximum": MAX_SAMPLES},
                    },
                },
                "Load": {
                    "type": "object",
                    "properties": {
                        "site": {"type": "string"},
                        "load": {"type": "number"},
                        "connections": {"type": ["integer", "null"]},
                        "reported_at": {"type": "string", "format": "date-time"},
                        "rtt_networks": {"type": "integer", "minimum": 0},
                    },
                },
                "Status": {
                    "type": "object",
                    "required": ["revision", "default_pool", "pools", "sites", "workers"],
                    "properties": {
                        "revision": {"type": "integer"},
                        "default_pool": {"type": "string"},
                        "pools": {
                            "type": "object",
                            "additionalProperties": {
                                "type": "object",
                                "properties": {
                                    "all_down": {"enum": ["sorry", "fail-open"]},
                                    "failing_open": {"type": "boolean"},
                                    "eligible": {"type": "array", "items": {"type": "string"}},
                                },
                            },
                        },
                        "sites": {"type": "array", "items": {"type": "object"}},
                        "late_probe_results": {"type": "integer", "minimum": 0},
                        "dns": {
                            "description": "the DNS front's counters since start: queries"
                            " (udp, tcp), answers by rcode, truncated, rrl_dropped,"
                            " rrl_slipped, TCP connections closed at a limit",
                            "type": "object",
                            "additionalProperties": {"type": "integer", "minimum": 0},
                        },
                        "workers": {
                            "description": "the worker processes (null when the public"
                            " listener runs in the control process itself)",
                            "type": ["array", "null"],
                            "items": {
                                "type": "object",
                                "properties": {
                                    "index": {"type": "integer"},
                                    "pid": {"type": ["integer", "null"]},
                                    "ready": {"type": "boolean"},
                                    "generation": {"type": "integer"},
                                    "restarts": {"type": "integer"},
                                },
                            },
                        },
                    },
                },
                "Verdict": {
                    "type": "object",
                    "required": ["status", "checks"],
                    "properties": {
                        "status": {"enum": ["ok", "failing"]},
                        "checks": {
                            "type": "object",
                            "additionalProperties": {
                                "type": "object",
                                "required": ["ok", "detail"],
                                "properties": {
                                    "ok": {"type": "boolean"},
                                    "detail": {"type": "string"},
                                },
                            },
                        },
                        "snapshot_age": {
                            "type": ["number", "null"],
                            "description": "seconds since the registry was last read in full",
                        },
                    },
                },
                "RulesIn": {
                    "type": "object",
                    "properties": {"rules": {"type": "integer"}, "enabled": {"type": "boolean"}},
                },
                "ExplainIn": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["url"],
                    "properties": {
                        "url": {"type": "string", "format": "http-url", "pattern": URL_PATTERN},
                        "method": {"type": "string", "pattern": HTTP_NAME_PATTERN},
                        "remote_addr": {
                            "type": "string",
                            "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
                        },
                        "subnet": {
                            "type": "string",
                            "maxLength": 64,
                            "description": "a client subnet (as EDNS sends it) that placement "
                            "locates instead of remote_addr, e.g. 198.51.100.0/24",
                        },
                        "headers": {
                            "type": "object",
                            "maxProperties": 100,
                            "propertyNames": {"pattern": HTTP_NAME_PATTERN},
                            "additionalProperties": {
                                "type": "string",
                                "maxLength": 8192,
                                "pattern": "^[\\t -~]*$",
                            },
                        },
                    },
                },
                "ExplainBody": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/ExplainIn"},
                        {"$ref": "#/components/schemas/DnsExplainIn"},
                    ]
                },
                "DnsExplainIn": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["dns"],
                    "properties": {
                        "dns": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1, "maxLength": 1024},
                                "type": {"type": "string", "pattern": "^[A-Za-z0-9]{1,16}$"},
                                "resolver": {
                                    "type": "string",
                                    "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
                                },
                                "subnet": {"type": "string", "maxLength": 64},
                            },
                        }
                    },
                },
                "Explained": {
                    "type": "object",
                    "required": ["outcome", "answer", "client", "placements", "text"],
                    "properties": {
                        "outcome": {"type": ["object", "null"]},
                        "answer": {"type": "object"},
                        "client": {
                            "type": "object",
                            "properties": {
                                "remote_addr": {"type": "string"},
                                "subnet": {"type": ["string", "null"]},
                            },
                        },
                        "placements": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Placement"},
                        },
                        "dns": {"type": "object", "description": "the dns variant's answer"},
                        "text": {"type": "string"},
                    },
                },
                "Placement": {
                    "type": "object",
                    "required": ["pool", "sites", "located", "considered"],
                    "properties": {
                        "pool": {"type": "string"},
                        "sites": {"type": "array", "items": {"type": "string"}},
                        "located": {
                            "type": "object",
                            "properties": {
                                "source": {"enum": ["prefix-map", "database", "none"]},
                                "prefix": {"type": ["string", "null"]},
                                "region": {"type": ["string", "null"]},
                                "asn": {"type": ["integer", "null"]},
                                "country": {"type": ["string", "null"]},
                                "continent": {"type": ["string", "null"]},
                                "coordinates": {
                                    "type": ["array", "null"],
                                    "items": {"type": "number"},
                                },
                            },
                        },
                        "considered": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["site", "verdict"],
                                "properties": {
                                    "site": {"type": "string"},
                                    "verdict": {"enum": list(VERDICTS)},
                                    "tier": {"type": ["string", "null"]},
                                    "distance_km": {"type": ["number", "null"]},
                                    "rtt_ms": {"type": ["number", "null"]},
                                    "detail": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message", "field"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "field": {"type": ["string", "null"]},
                            },
                        }
                    },
                },
            },
        },
    }
