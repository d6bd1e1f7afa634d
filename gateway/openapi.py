"""The gateway's OpenAPI document, assembled from the routes: each endpoint describes
its own path (an `openapi(context)` beside its handlers); the pieces several of them
use, and the components, are here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from starlette.routing import BaseRoute, Route

from common.ids import IMAGE_ID_PATTERN
from gateway.params import Param
from gateway.presets import QUERY_NAME, Presets

PROBLEM = {"$ref": "#/components/responses/Problem"}
ID = {
    "name": "image_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": IMAGE_ID_PATTERN},
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
IMAGE_JSON = {
    "description": "Image metadata.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Image"}}},
}
STATUS_OK = {
    "description": "Healthy.",
    "content": {"application/json": {"schema": {"type": "object"}}},
}


def errors(*statuses: int) -> dict[str, Any]:
    """The problem responses of these statuses."""
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


@dataclass(frozen=True)
class Context:
    """What the document depends on: the transformation parameters under the service's
    limits, the configured presets, and whether signed URLs are on (their parameters,
    route and security scheme)."""

    params: tuple[Param, ...]
    presets: Presets
    signing: bool

    def signature(self) -> list[dict[str, Any]]:
        """A signed URL's query parameters, where signing is on."""
        return SIGNATURE if self.signing else []

    def values(self) -> dict[str, Any]:
        """Each transformation parameter's schema, by name."""
        return {p.name: p.schema for p in self.params}

    def transform(self) -> list[dict[str, Any]]:
        """The transformation parameters as query parameters, with the preset's."""
        query = [
            {
                "name": p.name,
                "in": "query",
                "required": False,
                "schema": p.schema,
                "description": p.description,
                # A flag is given alone: ?grayscale
                **({"allowEmptyValue": True} if p.schema["type"] == "boolean" else {}),
            }
            for p in self.params
        ]
        if self.presets.only:
            query = []  # each is refused: a schema offering them would be a lie
        if self.presets.names:
            query.append(
                {
                    "name": QUERY_NAME,
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": self.presets.names},
                    "description": "A named transformation (GET /presets lists them); "
                    + (
                        "the only transformation parameter this service takes."
                        if self.presets.only
                        else "parameters given beside it win over the preset's."
                    ),
                }
            )
        return query


IMAGE_SCHEMA = {
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
PROBLEM_SCHEMA = {
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
}


def _security(signing: bool) -> dict[str, Any]:
    schemes: dict[str, Any] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (IMAGESVC_API_KEYS) or a JWT whose sub is the "
            "owner and whose scope grants images:read, images:write, images:delete "
            "or images:admin (IMAGESVC_JWT_SECRET or IMAGESVC_JWT_JWKS).",
        }
    }
    if signing:
        schemes["signedUrl"] = {
            "type": "apiKey",
            "in": "query",
            "name": "sig",
            "description": "A signed URL grants a read of exactly that URL until exp.",
        }
    return schemes


def document(routes: Iterable[BaseRoute], context: Context) -> dict[str, Any]:
    """OpenAPI 3.1 for every route whose endpoint describes itself (the page's files
    under /ui and /docs/assets are not API)."""
    paths = {
        route.path: route.endpoint.openapi(context)
        for route in routes
        if isinstance(route, Route) and hasattr(route.endpoint, "openapi")
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "imageservice", "version": "1.0.0"},
        "paths": paths,
        "components": {
            "schemas": {"Image": IMAGE_SCHEMA, "Problem": PROBLEM_SCHEMA},
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
            "securitySchemes": _security(context.signing),
        },
    }
