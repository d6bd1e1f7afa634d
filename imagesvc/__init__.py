"""A Python client of the image service's HTTP API, and the `imagesvc` command built on it.

    from imagesvc import Client

    with Client("http://127.0.0.1:8080", token="...") as client:
        image = client.upload("cat.jpg")
        thumb = client.get(image.id, w=300, format="webp").content
        url = client.url(image.id, w=300, h=200, fit="cover")

AsyncClient has the same methods, awaited. Errors are ProblemError subclasses carrying
the gateway's RFC 9457 problem body (see imagesvc.errors).
"""

from imagesvc.client import AsyncClient, Client, Image, Page, SignedURL, Variant
from imagesvc.errors import (
    BadRequest,
    Forbidden,
    ImageServiceError,
    InvalidParameter,
    NotFound,
    PayloadTooLarge,
    ProblemError,
    RateLimited,
    ServiceUnavailable,
    ServiceUnreachable,
    Unauthorized,
    UnprocessableImage,
    UnsupportedMediaType,
)
from imagesvc.signing import Signer
from imagesvc.urls import PARAMETERS, URLBuilder

__all__ = [
    "PARAMETERS",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Forbidden",
    "Image",
    "ImageServiceError",
    "InvalidParameter",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "ProblemError",
    "RateLimited",
    "ServiceUnavailable",
    "ServiceUnreachable",
    "SignedURL",
    "Signer",
    "URLBuilder",
    "Unauthorized",
    "UnprocessableImage",
    "UnsupportedMediaType",
    "Variant",
]
