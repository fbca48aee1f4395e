"""The HTTP API's OpenAPI 3.1 document, served at ``/api/openapi.json``."""

from typing import Any

_ROOM = {
    "name": "room",
    "in": "path",
    "required": True,
    "description": "1-64 of [A-Za-z0-9_.-], not starting with '.' or '-'.",
    "schema": {"type": "string"},
}
_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}
_MESSAGE = {
    "type": "object",
    "required": ["type", "id", "seq", "room", "ts", "source", "sender", "topic", "message"],
    "properties": {
        "type": {"const": "message"},
        "id": {"type": "string"},
        "seq": {"type": "integer"},
        "room": {"type": "string"},
        "ts": {"type": "string"},
        "source": {"enum": ["ws", "mqtt", "http"]},
        "sender": {"type": ["string", "null"]},
        "topic": {"type": ["string", "null"]},
        "message": {},
        "encoding": {"const": "base64"},
    },
}
_MEMBER = {
    "type": "object",
    "required": ["key", "kind", "name", "since"],
    "properties": {
        "key": {"type": "string"},
        "kind": {"enum": ["browser", "device"]},
        "name": {"type": "string"},
        "since": {"type": "string"},
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": "an error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }


def _ok(description: str, schema: dict[str, Any], status: int = 200) -> dict[str, Any]:
    return {
        str(status): {
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


SCHEMA: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Rooms gateway",
        "version": "1",
        "description": "MQTT devices and WebSocket browsers share rooms; this API posts into "
        "them and reads their history and presence.",
    },
    "components": {
        "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Error": _ERROR, "Message": _MESSAGE, "Member": _MEMBER},
    },
    "paths": {
        "/api/rooms/": {
            "get": {
                "summary": "The rooms the caller may read",
                "security": [{}, {"token": []}],
                "responses": {
                    **_ok(
                        "rooms",
                        {
                            "type": "object",
                            "required": ["rooms"],
                            "properties": {
                                "rooms": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": [
                                            "name",
                                            "people",
                                            "devices",
                                            "messages_per_minute",
                                        ],
                                        "properties": {
                                            "name": {"type": "string"},
                                            "people": {"type": "integer"},
                                            "devices": {"type": "integer"},
                                            "messages_per_minute": {"type": "integer"},
                                        },
                                    },
                                }
                            },
                        },
                    ),
                    **_errors(401, 429),
                },
            }
        },
        "/api/rooms/{room}/messages": {
            "parameters": [_ROOM],
            "get": {
                "summary": "A room's messages after a seq, oldest first",
                "security": [{}, {"token": []}],
                "parameters": [
                    {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                ],
                "responses": {
                    **_ok(
                        "messages",
                        {
                            "type": "object",
                            "required": ["room", "gap", "more", "messages"],
                            "properties": {
                                "room": {"type": "string"},
                                "gap": {"type": "boolean"},
                                "more": {"type": "boolean"},
                                "messages": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Message"},
                                },
                            },
                        },
                    ),
                    **_errors(400, 401, 404, 429, 503),
                },
            },
            "post": {
                "summary": "Put a message into a room (browsers and MQTT receive it)",
                "security": [{"token": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["message"],
                                "properties": {"message": {}},
                            }
                        }
                    },
                },
                "responses": {
                    **_ok(
                        "the message as it entered the room",
                        {"$ref": "#/components/schemas/Message"},
                        201,
                    ),
                    **_errors(400, 401, 403, 404, 413, 415, 429, 503),
                },
            },
        },
        "/api/rooms/{room}/presence": {
            "parameters": [_ROOM],
            "get": {
                "summary": "Who is in a room now, a page at a time",
                "security": [{}, {"token": []}],
                "parameters": [
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                ],
                "responses": {
                    **_ok(
                        "members",
                        {
                            "type": "object",
                            "required": ["room", "presence", "count", "cursor"],
                            "properties": {
                                "room": {"type": "string"},
                                "presence": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Member"},
                                },
                                "count": {"type": "integer"},
                                "cursor": {"type": ["string", "null"]},
                            },
                        },
                    ),
                    **_errors(400, 401, 404, 429, 503),
                },
            },
        },
    },
}
