"""The admin API described as OpenAPI 3.1, served at ``GET /api/v1/openapi.json``."""

from __future__ import annotations

from typing import Any

from dispatcher import __version__

_ERROR = {"$ref": "#/components/responses/Error"}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}


def _json(schema_ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}


def _ok(description: str, schema_ref: str) -> dict[str, Any]:
    return {"description": description, "content": _json(schema_ref)}


def _op(summary: str, responses: dict[str, Any], body: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, "4XX": _ERROR}}
    if body:
        op["requestBody"] = {"required": True, "content": _json(body)}
    return op


def openapi_document() -> dict[str, Any]:
    check = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "description": "path under base_url, or absolute URL"},
            "expect": {"type": "string"},
            "interval": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
            "rise": {"type": "integer", "minimum": 1, "maximum": 100},
            "fall": {"type": "integer", "minimum": 1, "maximum": 100},
        },
    }
    site_fields = {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"},
        "base_url": {"type": "string", "format": "uri", "description": "absolute http(s) URL"},
        "pool": {"type": "string"},
        "weight": {"type": "integer", "minimum": 0, "maximum": 10000},
        "drained": {"type": "boolean"},
        "check": {"$ref": "#/components/schemas/Check"},
    }
    site_changes = {k: v for k, v in site_fields.items() if k != "name"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "webfarm dispatcher admin API", "version": __version__},
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/sites": {
                "get": _op("List sites with their state", {"200": _ok("sites", "SiteList")}),
                "post": _op("Register a site", {"201": _ok("created", "Site")}, "NewSite"),
            },
            "/api/v1/sites/{name}": {
                "parameters": [_NAME],
                "get": _op("One site with its state", {"200": _ok("the site", "Site")}),
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
                    "Pools and sites, health, load, redirects", {"200": _ok("status", "Status")}
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
                    },
                },
                "put": {
                    "summary": "Replace the rules (validated, swapped atomically, stored)",
                    "requestBody": {
                        "required": True,
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "responses": {
                        "200": _ok("in force", "RulesIn"),
                        "4XX": _ERROR,
                    },
                },
            },
            "/api/v1/explain": {
                "post": _op(
                    "What a client asking for a URL would get, rule by rule",
                    {"200": _ok("the explanation", "Explained")},
                    "ExplainIn",
                ),
            },
            "/api/v1/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "ok"}}},
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {"description": "an error", "content": _json("Error")},
            },
            "schemas": {
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
                        "connections": {"type": "integer", "minimum": 0},
                    },
                },
                "Load": {
                    "type": "object",
                    "properties": {
                        "site": {"type": "string"},
                        "load": {"type": "number"},
                        "connections": {"type": ["integer", "null"]},
                        "reported_at": {"type": "string", "format": "date-time"},
                    },
                },
                "Status": {"type": "object"},
                "RulesIn": {
                    "type": "object",
                    "properties": {"rules": {"type": "integer"}, "enabled": {"type": "boolean"}},
                },
                "ExplainIn": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["url"],
                    "properties": {
                        "url": {"type": "string", "description": "absolute http(s) URL"},
                        "method": {"type": "string"},
                        "remote_addr": {"type": "string"},
                        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                },
                "Explained": {
                    "type": "object",
                    "properties": {
                        "outcome": {"type": ["object", "null"]},
                        "answer": {"type": "object"},
                        "text": {"type": "string"},
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
