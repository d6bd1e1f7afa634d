"""processor/spec.py in-process: a request's canonical form and variant key (every
spelling of one transformation one key, every other transformation another), and the
field a refusal names."""

from __future__ import annotations

import pytest
from imageservice.v1 import processor_service_pb2 as ppb

from common.errors import Reason, ServiceError
from processor import spec
from tests.support import SPEC_LIMITS, wanted

Op = ppb.Operation
IMAGE = "A" * 22


def key(*ops: Op, **output: object) -> str:
    return wanted(*ops, **output).key(IMAGE)


def refused_field(*ops: Op, **output: object) -> str:
    with pytest.raises(ServiceError) as caught:
        wanted(*ops, **output)
    assert caught.value.reason == Reason.INVALID_ARGUMENT
    return str(caught.value.metadata["field"])


def test_the_order_asked_in_does_not_matter() -> None:
    resize, blur, flip = (
        Op(resize=ppb.Resize(width=300)),
        Op(blur=ppb.Blur(sigma=2)),
        Op(flip=ppb.Flip()),
    )
    assert key(resize, blur, flip) == key(flip, blur, resize) == key(blur, resize, flip)


def test_defaults_spelled_out_are_the_defaults() -> None:
    assert key(Op(resize=ppb.Resize(width=300))) == key(
        Op(resize=ppb.Resize(width=300, fit=ppb.FIT_CONTAIN, gravity=ppb.GRAVITY_CENTER))
    )


def test_what_changes_nothing_is_dropped() -> None:
    nothing = key()
    assert key(Op(rotate=ppb.Rotate(angle=0))) == nothing
    assert key(Op(blur=ppb.Blur(sigma=0))) == nothing
    assert key(Op(rotate=ppb.Rotate(angle=90))) != nothing


def test_what_a_format_cannot_use_does_not_split_its_variants() -> None:
    png = ppb.OUTPUT_FORMAT_PNG
    assert key(format=png, quality=50) == key(format=png)
    assert key(format=ppb.OUTPUT_FORMAT_JPEG, quality=50) != key(format=ppb.OUTPUT_FORMAT_JPEG)


def test_every_difference_is_another_key(monkeypatch: pytest.MonkeyPatch) -> None:
    requests = [
        wanted(Op(resize=ppb.Resize(width=300))),
        wanted(Op(resize=ppb.Resize(width=301))),
        wanted(Op(resize=ppb.Resize(width=300, height=200))),
        wanted(Op(resize=ppb.Resize(width=300, height=200, fit=ppb.FIT_COVER))),
        wanted(Op(resize=ppb.Resize(width=300)), format=ppb.OUTPUT_FORMAT_PNG),
        wanted(Op(resize=ppb.Resize(width=300)), Op(flip=ppb.Flip())),
        wanted(Op(blur=ppb.Blur(sigma=2))),
    ]
    keys = {request.key(IMAGE) for request in requests}
    assert len(keys) == len(requests)
    # The image is part of the key, and so is the pipeline's version.
    assert requests[0].key("B" * 22) not in keys
    monkeypatch.setattr(spec, "PIPELINE_VERSION", spec.PIPELINE_VERSION + "-next")
    assert requests[0].key(IMAGE) not in keys


def test_the_canonical_text_is_stable_json() -> None:
    canonical = wanted(Op(resize=ppb.Resize(width=300)), Op(blur=ppb.Blur(sigma=2))).canonical()
    assert canonical.startswith('{"ops":[["resize",{')
    assert '["blur",{"sigma":2.0}]' in canonical
    assert " " not in canonical
    assert (
        canonical
        == wanted(Op(blur=ppb.Blur(sigma=2)), Op(resize=ppb.Resize(width=300))).canonical()
    )


@pytest.mark.parametrize(
    ("ops", "output", "field"),
    [
        ((Op(),), {}, "operations"),
        ((Op(blur=ppb.Blur(sigma=2)), Op(blur=ppb.Blur(sigma=3))), {}, "blur"),
        ((Op(blur=ppb.Blur(sigma=51)),), {}, "blur.sigma"),
        ((Op(resize=ppb.Resize(width=9000)),), {}, "resize.width"),
        ((Op(crop=ppb.Crop(left=0, top=0, width=0, height=5)),), {}, "crop"),
    ],
)
def test_a_refusal_names_the_field(
    ops: tuple[Op, ...], output: dict[str, object], field: str
) -> None:
    assert refused_field(*ops, **output) == field


def test_more_operations_than_there_are_kinds_are_refused() -> None:
    many = [Op(blur=ppb.Blur(sigma=1))] * 20
    with pytest.raises(ServiceError) as caught:
        spec.parse(many, ppb.OutputOptions(), SPEC_LIMITS)
    assert caught.value.metadata["field"] == "operations"
