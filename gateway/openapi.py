"""The gateway's OpenAPI document, built from the same tables that parse requests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.params import CURSOR, SHA256, Param
from gateway.presets import QUERY_NAME, Presets
from gateway.signed_urls import MAX_EXPIRES_IN

PROBLEM = {"$ref": "#/components/responses/Problem"}
CURSOR_PATTERN = f"^{CURSOR}$"
ID = {
    "name": "image_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"},
    "description": "The image's id, as the upload answered it.",
}
IMAGE_BYTES = {
    "description": "The image bytes (HEAD: the headers alone).",
    "headers": {
        "ETag": {"schema": {"type": "string"}, "description": "Strong: the bytes' SHA-256."},
        "Cache-Control": {"schema": {"type": "string"}},
        "Vary": {"schema": {"type": "string"}, "description": "Accept, when negotiated."},
        "X-Cache": {"schema": {"type": "string", "enum": ["HIT", "MISS"]}},
    },
    "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
}

# The page and the docs: static HTML that loads its scripts from /ui and /docs/assets.
HTML = {
    "responses": {
        "200": {
            "description": "An HTML page.",
            "content": {"text/html": {"schema": {"type": "string"}}},
        }
    }
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): PROBLEM for status in statuses}


SIGNATURE = [
    {
        "name": "kid",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._~-]{1,64}$"},
        "description": "Signed URLs: the key that signed it (IMAGESVC_URL_SIGNING_KEYS).",
    },
    {
        "name": "exp",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
        "description": "Signed URLs: UNIX seconds from which the signature is refused.",
    },
    {
        "name": "sig",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "Signed URLs: base64url (unpadded) HMAC-SHA256 of the canonical "
        "string (docs/http.md, Signed URLs); a bad one is 403 with a reason.",
    },
]


def _signed_urls(params: Iterable[Param]) -> dict[str, Any]:
    """POST /images/{image_id}/signed-urls, which exists where signing is on."""
    return {
        "post": {
            "summary": "A signed URL of the image (its owner with images:write, or an admin)",
            "parameters": [ID],
            "requestBody": {
                "required": False,  # none: the original, for an hour
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "params": {
                                    "type": "object",
                                    "description": "Transformation parameters, as in the "
                                    "query of GET /images/{image_id}; a flag is true.",
                                    "properties": {p.name: p.schema for p in params},
                                    "additionalProperties": False,
                                },
                                "expires_in": {
                                    "type": "integer",
                                    "minimum": 1,
                                    "maximum": MAX_EXPIRES_IN,
                                    "default": 3600,
                                },
                            },
                            "additionalProperties": False,
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "The URL (path and query) and when it expires.",
                    "headers": {"Cache-Control": {"schema": {"type": "string"}}},
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "url": {"type": "string"},
                                    "expires": {"type": "integer"},
                                },
                                "required": ["url", "expires"],
                            }
                        }
                    },
                },
                **_errors(400, 401, 403, 404, 413, 503, 504),
            },
        }
    }


def document(
    params: Iterable[Param], presets: Presets | None = None, signing: bool = False
) -> dict[str, Any]:
    """OpenAPI 3.1 for every route, parameter and response; params are the
    transformation parameters under the service's limits, presets the configured ones;
    signing: whether signed URLs are on (their parameters, route and security scheme)."""
    params = tuple(params)  # read twice where signing is on
    presets = presets or Presets()
    signature = SIGNATURE if signing else []
    transform = [
        {
            "name": p.name,
            "in": "query",
            "required": False,
            "schema": p.schema,
            "description": p.description,
            # A flag is given alone: ?grayscale
            **({"allowEmptyValue": True} if p.schema["type"] == "boolean" else {}),
        }
        for p in params
    ]
    if presets.only:
        transform = []  # each is refused: a schema offering them would be a lie
    if presets.names:
        transform.append(
            {
                "name": QUERY_NAME,
                "in": "query",
                "required": False,
                "schema": {"type": "string", "enum": presets.names},
                "description": "A named transformation (GET /presets lists them); "
                + (
                    "the only transformation parameter this service takes."
                    if presets.only
                    else "parameters given beside it win over the preset's."
                ),
            }
        )
    preset_values = {
        "type": "object",
        "properties": {p.name: p.schema for p in params},
        "additionalProperties": False,
    }
    image_schema = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "url": {"type": "string"},
            "filename": {"type": "string"},
            "media_type": {"type": "string"},
            "format": {"type": "string"},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "frames": {"type": "integer"},
            "bytes": {"type": "integer"},
            "sha256": {"type": "string"},
            "created": {"type": "string", "format": "date-time"},
            "owner": {"type": "string"},
            "visibility": {"type": "string", "enum": ["public", "private"]},
            "blurhash": {
                "type": ["string", "null"],
                "description": "BlurHash of the upright first frame (4x3 components, "
                "3x4 for a portrait image); null for an image stored before placeholders "
                "were made, or one none could be made of.",
            },
            "thumbhash": {
                "type": ["string", "null"],
                "contentEncoding": "base64",
                "description": "ThumbHash of the upright first frame, with its alpha, in "
                "standard base64; null when blurhash is.",
            },
        },
    }
    image_json = {
        "description": "Image metadata.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Image"}}},
    }
    status_ok = {
        "description": "Healthy.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    get_image = {
        "summary": "The original, or with transformation parameters a variant",
        "parameters": [ID, *transform, *signature],
        "responses": {
            "200": IMAGE_BYTES,
            "304": {"description": "Not modified (If-None-Match matched the ETag)."},
            **_errors(400, 401, 403, 404, 413, 422, 429, 503, 504),
        },
    }
    security: dict[str, Any] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (IMAGESVC_API_KEYS) or a JWT whose sub is the "
            "owner and whose scope grants images:read, images:write, images:delete "
            "or images:admin (IMAGESVC_JWT_SECRET or IMAGESVC_JWT_JWKS).",
        }
    }
    if signing:
        security["signedUrl"] = {
            "type": "apiKey",
            "in": "query",
            "name": "sig",
            "description": "A signed URL grants a read of exactly that URL until exp.",
        }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "imageservice", "version": "1.0.0"},
        "paths": {
            "/images": {
                "post": {
                    "summary": "Upload an image",
                    "description": "multipart/form-data with a `file` field, or the raw bytes "
                    "with an image/* Content-Type. Streamed; refused with 413 as soon as the "
                    "byte limit is passed.",
                    "parameters": [
                        {
                            "name": "visibility",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["public", "private"]},
                            "description": "Default: private where auth is configured, "
                            "else public.",
                        },
                        {
                            "name": "filename",
                            "in": "query",
                            "schema": {"type": "string", "maxLength": 255},
                            "description": "Original filename for raw uploads.",
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "file": {
                                            "type": "string",
                                            "format": "binary",
                                            "minLength": 1,
                                        }
                                    },
                                    "required": ["file"],
                                }
                            },
                            "image/*": {
                                "schema": {"type": "string", "format": "binary", "minLength": 1}
                            },
                        },
                    },
                    "responses": {
                        "201": {
                            **image_json,
                            "headers": {"Location": {"schema": {"type": "string"}}},
                        },
                        **_errors(400, 401, 403, 408, 413, 415, 422, 429, 503, 504, 507),
                    },
                },
                "get": {
                    "summary": "The caller's images, newest first",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                            "description": "Where the page starts: an opaque value, the "
                            "previous page's next_cursor (also in its Link header). Any "
                            "value of this shape is a position in the caller's own list.",
                        },
                        {
                            "name": "sha256",
                            "in": "query",
                            "schema": {"type": "string", "pattern": f"^{SHA256}$"},
                            "description": "Only the caller's images whose original has "
                            "this SHA-256 (lower-case hex, as `sha256` in the metadata): a "
                            "lookup by content, e.g. to skip an upload already stored. "
                            "Others' images are never found.",
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "A page of images.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "images": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/Image"},
                                            },
                                            "next_cursor": {"type": ["string", "null"]},
                                        },
                                    }
                                }
                            },
                        },
                        **_errors(400, 401, 403, 503, 504),
                    },
                },
            },
            "/images/{image_id}": {
                "get": get_image,
                "head": {**get_image, "summary": "Headers of GET /images/{image_id}"},
                "delete": {
                    "summary": "Delete the image and all its variants",
                    "parameters": [ID],
                    "responses": {
                        "204": {"description": "Deleted."},
                        **_errors(401, 403, 404, 503, 504),
                    },
                },
            },
            "/images/{image_id}/info": {
                "get": {
                    "summary": "Metadata",
                    "parameters": [ID],
                    "responses": {"200": image_json, **_errors(401, 403, 404, 503, 504)},
                }
            },
            "/blurred-images/{image_id}": {
                "get": {
                    "summary": "The image blurred (sigma 10), as the original service had it",
                    "parameters": [ID, *signature],
                    "responses": {"200": IMAGE_BYTES, **_errors(400, 401, 403, 404, 429, 503, 504)},
                }
            },
            "/presets": {
                "get": {
                    "summary": "The presets: each one's name and transformation parameters",
                    "responses": {
                        "200": {
                            "description": "Preset name to its parameters (empty when "
                            "none are configured).",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "additionalProperties": preset_values,
                                    }
                                }
                            },
                        },
                        **_errors(400),
                    },
                }
            },
            "/healthz": {
                "get": {"summary": "Liveness", "responses": {"200": status_ok}},
            },
            "/health": {
                "get": {
                    "summary": "Liveness, as /healthz (the original service's route)",
                    "responses": {"200": status_ok},
                },
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: both gRPC services answer SERVING",
                    "responses": {"200": status_ok, **_errors(503)},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/": {"get": {"summary": "The web page (upload, browse, transform)", **HTML}},
            "/docs": {"get": {"summary": "These docs, in Swagger UI", **HTML}},
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Image": image_schema,
                "Problem": {
                    "type": "object",
                    "description": "RFC 9457 problem details.",
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "instance": {"type": "string"},
                        "parameter": {"type": "string"},
                        "preset": {"type": "string"},
                        "reason": {"type": "string"},
                    },
                },
            },
            "responses": {
                "Problem": {
                    "description": "An error, as RFC 9457 problem details.",
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
                }
            },
            "securitySchemes": security,
        },
    }
    if signing:
        doc["paths"]["/images/{image_id}/signed-urls"] = _signed_urls(params)
    return doc
