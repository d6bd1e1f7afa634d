"""Schemathesis hooks (loaded by schemathesis.toml): what OpenAPI cannot say.

OpenAPI describes each query parameter alone; some are refused only in combination
(`fit` without `w` or `h`, `progressive` with `format=png`...). Those combinations are
left out of the cases schemathesis counts as valid, judged by the gateway's own rule
(gateway.params.Parameters.conflict), which tests/test_http_contract.py tests directly.
A preset is spelled out first, as the gateway does, so the parameters beside it are
judged together with the preset's.
"""

from __future__ import annotations

from typing import Any

import schemathesis

from gateway import params
from gateway.config import Settings
from gateway.problems import HTTPProblem

SETTINGS = Settings.from_env()
PARAMETERS = params.Parameters(
    params.RequestLimits(SETTINGS.max_output_dimension, SETTINGS.max_blur_sigma)
)


def _raw(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _whole(value: Any) -> Any:
    """As the gateway reads JSON: 3.0 is the integer 3."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _asked(case: Any) -> dict[str, Any] | None:
    """The transformation parameters a case asks for: in the query of an image, or in
    the body of a request for a signed URL of one."""
    if case.operation.path == "/images/{image_id}":
        return dict(case.query or {})
    if case.operation.path == "/images/{image_id}/signed-urls" and isinstance(case.body, dict):
        asked = case.body.get("params")
        if not isinstance(asked, dict):
            return None
        return {name: _whole(value) for name, value in asked.items()}
    return None


@schemathesis.hook
def filter_case(ctx: Any, case: Any) -> bool:
    """Keep a case unless its transformation parameters conflict with each other."""
    asked = _asked(case)
    if not asked:
        return True
    query = [(name, _raw(value)) for name, value in asked.items()]
    try:
        values = PARAMETERS.values(SETTINGS.presets.expand(query))
    except HTTPProblem:
        return True  # a parameter bad on its own: schemathesis meant it so
    return PARAMETERS.conflict(values) is None
