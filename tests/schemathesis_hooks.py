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
    params.Limits(SETTINGS.max_output_dimension, SETTINGS.max_blur_sigma)
)


def _raw(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@schemathesis.hook
def filter_case(ctx: Any, case: Any) -> bool:
    """Keep a case unless its transformation parameters conflict with each other."""
    if case.operation.path != "/images/{image_id}" or not case.query:
        return True
    query = [(name, _raw(value)) for name, value in case.query.items()]
    try:
        values = PARAMETERS.values(SETTINGS.presets.expand(query))
    except HTTPProblem:
        return True  # a parameter bad on its own: schemathesis meant it so
    return PARAMETERS.conflict(values) is None
