"""Every operation the processor applies, one module each, listed in pipeline order.

The pipeline has one fixed order, at most one operation of each kind, so the order a
caller lists operations in never matters. Adding an operation is its message in
processor_service.proto, one module here (see base.Operation for what it declares) and its
place in OPERATIONS; the gateway's parser, OpenAPI, error names and docs/http.md's table
follow from the declarations. docs/operations.md traces one operation through.
"""

from __future__ import annotations

from processor.operations import (
    adjust,
    blur,
    crop,
    flip,
    flop,
    grayscale,
    pad,
    pixelate,
    resize,
    rotate,
    sharpen,
    trim,
    watermark,
)
from processor.operations.base import Operation, Param, RequestLimits, Step

OPERATIONS: tuple[Operation, ...] = (
    trim.OPERATION,
    crop.OPERATION,
    resize.OPERATION,
    pad.OPERATION,
    rotate.OPERATION,
    flip.OPERATION,
    flop.OPERATION,
    adjust.OPERATION,
    grayscale.OPERATION,
    blur.OPERATION,
    sharpen.OPERATION,
    pixelate.OPERATION,
    # Last: drawn on the result as it will be served, never resized, blurred or turned.
    watermark.OPERATION,
)

__all__ = ["OPERATIONS", "Operation", "Param", "RequestLimits", "Step"]
