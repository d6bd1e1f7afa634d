"""The gateway's query parser (gateway/params.py) in-process: what a query turns into, and
which parameter a refusal names. tests/test_http_contract.py asks the same over HTTP."""

from __future__ import annotations

import pytest
from imageservice.v1 import processor_service_pb2 as ppb

from gateway.params import Parameters, RequestLimits
from gateway.problems import HTTPProblem

PARAMETERS = Parameters(RequestLimits(max_output_dimension=8192, max_blur_sigma=50))
Op = ppb.Operation


def refusal(query: list[tuple[str, str]]) -> tuple[object, str]:
    """The parameter a 400 names, and its detail."""
    with pytest.raises(HTTPProblem) as caught:
        PARAMETERS.parse(query, "*/*")
    problem = caught.value
    assert problem.status == 400
    return problem.extensions["parameter"], str(problem.detail)


def test_no_parameters_ask_for_the_original() -> None:
    assert PARAMETERS.parse([], "image/webp") is None


def test_a_query_becomes_operations_and_an_output_whatever_its_order() -> None:
    query = [("blur", "2"), ("w", "300"), ("grayscale", "")]
    asked = PARAMETERS.parse(query, "*/*")
    assert asked is not None
    assert asked.operations == [
        Op(resize=ppb.Resize(width=300)),
        Op(grayscale=ppb.Grayscale()),
        Op(blur=ppb.Blur(sigma=2)),
    ]
    assert PARAMETERS.parse(query[::-1], "*/*") == asked
    # No format: the processor picks one from Accept, so the answer varies with it.
    assert asked.output.format == ppb.OUTPUT_FORMAT_AUTO and list(asked.output.accept) == ["*/*"]
    assert asked.negotiated


def test_a_format_named_is_not_negotiated() -> None:
    asked = PARAMETERS.parse([("w", "300"), ("format", "png")], "image/webp")
    assert asked is not None
    assert asked.output.format == ppb.OUTPUT_FORMAT_PNG and not asked.output.accept
    assert not asked.negotiated


@pytest.mark.parametrize(
    ("query", "name", "detail"),
    [
        ([("x", "1")], "x", "unknown parameter"),
        ([("w", "300"), ("w", "200")], "w", "given more than once"),
        ([("w", "0")], "w", "must be between 1 and 8192"),
        ([("w", "8193")], "w", "must be between 1 and 8192"),
        ([("w", " 300")], "w", "must be a whole number, digits only"),
        ([("w", "3.0")], "w", "must be a whole number, digits only"),
        ([("w", "+300")], "w", "must be a whole number, digits only"),
        ([("blur", "51")], "blur", "must be between 0 and 50"),
        ([("blur", "inf")], "blur", "must be a number"),
        ([("grayscale", "yes")], "grayscale", "a flag: give it alone, or as true or false"),
        ([("fit", "COVER"), ("w", "3")], "fit", "must be one of contain, cover, fill"),
        ([("crop", "0,0,0,0")], "crop", "must be left,top,width,height in pixels"),
        ([("wm", "nope")], "wm", "must be an image id"),
        # Together: an option the chosen format cannot use is refused, not ignored.
        ([("q", "50"), ("format", "png")], "q", "PNG and GIF are lossless"),
        ([("progressive", ""), ("format", "png")], "progressive", ""),
        ([("w", "10"), ("gravity", "north")], "gravity", ""),
    ],
)
def test_a_refusal_names_the_parameter_and_says_why(
    query: list[tuple[str, str]], name: str, detail: str
) -> None:
    named, said = refusal(query)
    assert named == name
    assert said.startswith(f"{name}: {detail}")


def test_the_limits_are_the_services_own() -> None:
    small = Parameters(RequestLimits(max_output_dimension=500, max_blur_sigma=3))
    assert small.parse([("w", "500"), ("blur", "3")], "*/*") is not None
    with pytest.raises(HTTPProblem, match="w: must be between 1 and 500"):
        small.parse([("w", "501")], "*/*")
    with pytest.raises(HTTPProblem, match="blur: must be between 0 and 3"):
        small.parse([("blur", "3.5")], "*/*")


def test_the_images_a_query_names_are_its_watermarks() -> None:
    image_id = "A" * 22
    assert PARAMETERS.images([("w", "10"), ("wm", image_id)]) == [("wm", image_id)]
    assert PARAMETERS.images([("w", "10")]) == []
    with pytest.raises(HTTPProblem, match="wm: must be an image id"):
        PARAMETERS.images([("wm", "A" * 21)])


def test_blurred_is_sigma_10_or_the_largest_allowed() -> None:
    assert PARAMETERS.blurred().operations == [Op(blur=ppb.Blur(sigma=10))]
    small = Parameters(RequestLimits(max_output_dimension=8192, max_blur_sigma=3))
    assert small.blurred().operations == [Op(blur=ppb.Blur(sigma=3))]
    assert small.blurred().output.frames == ppb.FRAMES_ALL_OR_FIRST
