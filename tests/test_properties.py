"""Properties of the transformation parameters, in process (no servers: the gateway's
parser and the processor's canonical form are plain functions).

- Every spelling of one transformation is one variant key: parameter order, defaults
  given or left out, aliases (jpg, inside, fp:0.5,0.5), number formats (2, 2.0, 20e-1,
  leading zeros), colour case, angles a turn apart, dpr folded into w and h; a preset
  of the same values; an Accept header naming the same formats.
- The canonical form parses back to itself: a Spec written out as a query is that Spec.
- The gateway accepts nothing the processor refuses, and refuses with a 400 only.

The `ci` profile (tests/conftest.py) keeps this to a few seconds and the same examples
on every run; HYPOTHESIS_PROFILE=fuzz runs thousands (docs/testing.md).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import assume, given, note
from hypothesis import strategies as st
from imageservice.v1 import processor_service_pb2 as ppb

from common.errors import ServiceError
from gateway.params import Parameters
from gateway.presets import load_presets
from gateway.problems import HTTPProblem
from processor import spec
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
from processor.operations.base import WHITE, Choice, Flag, Pattern

# The processor's defaults (processor/config.py), which the gateway reads too.
LIMITS = spec.RequestLimits(max_output_dimension=8192, max_blur_sigma=50.0)
PARAMETERS = Parameters(LIMITS)
BY_NAME = {param.name: param for param in PARAMETERS.table}
IMAGE_ID = "k3W0UWh5Q3q2-7wF0bYb0x"
ACCEPT = "image/avif,image/webp,*/*"

Query = list[tuple[str, str]]
# One part of a transformation: its equivalent spellings, each some query parameters
# (none: the part left out is one of its spellings).
Part = list[tuple[tuple[str, str], ...]]


def parsed(query: Sequence[tuple[str, str]], accept: str = ACCEPT) -> spec.Spec:
    """The Spec the processor makes of what the gateway makes of query."""
    wanted = PARAMETERS.parse(list(query), accept)
    assert wanted is not None, query
    return spec.parse(wanted.operations, wanted.output, LIMITS)


def key(query: Sequence[tuple[str, str]], accept: str = ACCEPT) -> str:
    return parsed(query, accept).key(IMAGE_ID)


# Spellings of one value.


def integers(n: int, width: int = 9) -> list[str]:
    """n, and n with leading zeros (Integer takes up to 9 digits)."""
    text = str(n)
    return sorted({text, text.zfill(len(text) + 1)[-width:], text.zfill(width)})


def numbers(value: Decimal) -> list[str]:
    """The spellings of one number the parser takes: trailing zeros or a trailing dot, no
    leading zero, exponents."""
    sign = "-" if value < 0 else ""
    size = abs(value)
    plain = f"{size:f}"
    forms = {plain, f"{size * 10:f}e-1", f"{size * 100:f}E-02", f"{size / 10:f}e+1", plain + "e0"}
    forms.add(plain + "00" if "." in plain else plain + ".00")
    if "." not in plain:
        forms.add(plain + ".")
    if plain.startswith("0."):
        forms.add(plain[1:])
    return sorted(sign + form for form in forms)


def one(name: str, spellings: Sequence[str]) -> Part:
    return [((name, raw),) for raw in spellings]


def flag(name: str, on: bool) -> Part:
    return one(name, ["", "true"]) if on else [(), ((name, "false"),)]


def decimals(lo: str, hi: str, places: int) -> st.SearchStrategy[Decimal]:
    return st.decimals(Decimal(lo), Decimal(hi), places=places)


def colours(rgba: tuple[int, int, int, int]) -> list[str]:
    """Upper, lower and mixed case, with and without '#', with ff alpha or without."""
    hexes = [bytes(rgba[:3]).hex()] if rgba[3] == 255 else []
    hexes.append(bytes(rgba).hex())
    forms = []
    for text in hexes:
        mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(text))
        forms += [text, text.upper(), "#" + mixed]
    return forms


# Spellings of each part of a transformation.

COMPASS_POINTS = {
    "northwest": "0,0",
    "north": "0.5,0",
    "northeast": "1,0",
    "west": "0,0.5",
    "center": "0.5,0.5",
    "east": "1,0.5",
    "southwest": "0,1",
    "south": "0.5,1",
    "southeast": "1,1",
}


def focal(point: str) -> list[str]:
    """fp:X,Y with each fraction in its spellings (trailing zeros; 1.000)."""
    x, y = point.split(",")
    longer = {"0": ["0", "0.0", "0.000000"], "0.5": ["0.5", "0.50"], "1": ["1", "1.0", "1.00"]}
    return [f"fp:{a},{b}" for a in longer.get(x, [x]) for b in longer.get(y, [y])]


@st.composite
def sizes(draw: st.DrawFn) -> list[Part]:
    """w and/or h, with dpr folded in or not; fit, gravity and enlarge."""
    sides = draw(st.sampled_from([("w",), ("h",), ("w", "h")]))
    wanted = {side: draw(st.integers(1, LIMITS.max_output_dimension)) for side in sides}
    spellings: Part = []
    for dpr in (1, 2, 4):
        if all(value % dpr == 0 for value in wanted.values()):
            ratio = () if dpr == 1 else (("dpr", draw(st.sampled_from(numbers(Decimal(dpr))))),)
            for width in (9, 6):
                given = tuple((side, integers(v // dpr, width)[-1]) for side, v in wanted.items())
                spellings.append(given + ratio)
    spellings.append((*((side, str(v)) for side, v in wanted.items()), ("dpr", "1")))
    parts = [spellings, flag("enlarge", draw(st.booleans()))]
    if len(sides) == 1:
        # One side follows the aspect ratio: every fit means the same, and gravity nothing.
        gravity = draw(st.sampled_from([*resize.COVER_GRAVITIES, "fp:0.25,0.75"]))
        fits = [(), (("fit", "cover"), ("gravity", gravity))]
        fits += [(("fit", fit),) for fit in resize.FITS if fit != "pad"]
        return [*parts, fits]
    fit = draw(st.sampled_from(list(resize.FITS)))
    if fit in ("contain", "inside"):
        return [*parts, [(), (("fit", "contain"),), (("fit", "inside"),)]]
    if fit in ("fill", "outside"):
        return [*parts, one("fit", [fit])]
    compass = list(COMPASS_POINTS)
    named = compass if fit == "pad" else [*compass, "smart", "face", "point"]
    gravity = draw(st.sampled_from(named))
    if gravity == "point":
        x, y = draw(decimals("0", "1", 6)), draw(decimals("0", "1", 6))
        return [*parts, [(("fit", fit), ("gravity", raw)) for raw in focal(f"{x:f},{y:f}")]]
    spelled: Part = [(("fit", fit), ("gravity", gravity))]
    if gravity == "center":
        spelled.append((("fit", fit),))
    if fit == "cover" and gravity in COMPASS_POINTS:
        spelled += [(("fit", fit), ("gravity", raw)) for raw in focal(COMPASS_POINTS[gravity])]
    return [*parts, spelled]


@st.composite
def angles(draw: st.DrawFn) -> Part:
    """A clockwise angle: 0 is no rotation, and a whole turn more or less the same."""
    turn = Decimal(360)
    angle = draw(decimals("0", "359.99", 2))
    alike = [angle, angle - turn] if angle else [Decimal(0), turn, -turn]
    spellings: Part = [(("rotate", raw),) for value in alike for raw in numbers(value)]
    return spellings if angle else [(), *spellings]


def factor(name: str, value: Decimal, neutral: Decimal) -> Part:
    """A parameter whose neutral value (blur 0, brightness 1) is the same as none."""
    spellings = one(name, numbers(value))
    return [(), *spellings] if value == neutral else spellings


@st.composite
def marks(draw: st.DrawFn) -> list[Part]:
    gravity = draw(st.sampled_from(list(watermark.MARK_GRAVITIES)))
    gravities = one("wm_gravity", [gravity])
    if gravity == watermark.DEFAULT_GRAVITY:
        gravities.append(())
    offsets = []
    for name in ("wm_x", "wm_y"):
        offset = draw(st.integers(0, LIMITS.max_output_dimension))
        offsets.append(one(name, integers(offset)) + ([()] if offset == 0 else []))
    opacity = draw(decimals("0.01", "1", 3))
    scale = draw(decimals("0.01", "1", 3))
    return [
        one("wm", [draw(st.from_regex(r"[A-Za-z0-9_-]{22}", fullmatch=True))]),
        gravities,
        *offsets,
        factor("wm_opacity", opacity, Decimal(1)),
        one("wm_scale", numbers(scale)),
    ]


# What each format takes: its default quality (None: no quality), and whether it takes
# lossless, progressive and frames.
FORMATS = {
    "auto": (None, True, True, True),
    "jpeg": (82, False, True, False),
    "png": (None, False, False, True),
    "gif": (None, False, False, True),
    "webp": (80, True, False, True),
    "avif": (60, False, False, False),
    "heic": (60, False, False, False),
    "jxl": (75, True, False, False),
}


@st.composite
def outputs(draw: st.DrawFn) -> list[Part]:
    fmt = draw(st.sampled_from(list(FORMATS)))
    default_quality, lossless_too, progressive_too, frames_too = FORMATS[fmt]
    formats = {"auto": [(), (("format", "auto"),)], "jpeg": one("format", ["jpeg", "jpg"])}
    parts = [formats.get(fmt, one("format", [fmt]))]
    lossless = lossless_too and fmt != "auto" and draw(st.booleans())
    parts.append(flag("lossless", lossless))
    if not lossless and (fmt == "auto" or default_quality is not None):
        quality = draw(st.integers(1, 100) | st.none())
        if quality is not None:
            parts.append(one("q", integers(quality)))
        elif default_quality is not None:
            parts.append([(), *one("q", integers(default_quality))])
    parts.append(flag("progressive", progressive_too and draw(st.booleans())))
    if frames_too:
        first = draw(st.booleans())
        parts.append(one("frames", ["first"]) if first else [(), (("frames", "all"),)])
    keep = fmt != "gif" and draw(st.booleans())
    parts.append(one("metadata", ["keep"]) if keep else [(), (("metadata", "strip"),)])
    if fmt in ("auto", "jpeg"):  # bg flattens transparency: no format refuses it then
        rgba = draw(st.tuples(*[st.integers(0, 255)] * 4) | st.just(WHITE))
        parts.append(one("bg", colours(rgba)) + ([()] if rgba == WHITE else []))
    return parts


@st.composite
def transformations(draw: st.DrawFn) -> list[Part]:
    """A transformation no image could refuse, as its parts' spellings."""
    parts = draw(outputs())
    if draw(st.booleans()):
        parts += draw(sizes())
    if draw(st.booleans()):
        threshold = draw(st.integers(1, 255))
        if threshold == trim.DEFAULT_THRESHOLD:
            parts.append(one("trim", ["", "true", str(threshold)]))
        else:
            parts.append(one("trim", [str(threshold)]))
    if draw(st.booleans()):
        left, top = draw(st.integers(0, 999_999)), draw(st.integers(0, 999_999))
        width, height = draw(st.integers(1, 999_999)), draw(st.integers(1, 999_999))
        parts.append(
            [
                (("crop", f"{a},{b},{c},{d}"),)
                for a, b in ((str(left), str(top)), (str(left).zfill(6), str(top).zfill(6)))
                for c, d in ((str(width), str(height)), (str(width).zfill(6), str(height)))
            ]
        )
    if draw(st.booleans()):
        four = draw(st.booleans())
        sides = [draw(st.integers(0, 100)) for _ in range(4 if four else 1)] * (1 if four else 4)
        spellings = one("pad", [",".join(map(str, sides))])
        if len(set(sides)) == 1:
            spellings.append((("pad", str(sides[0])),))
        parts.append(spellings)
    if draw(st.booleans()):
        parts.append(draw(angles()))
    for name in ("flip", "flop", "grayscale"):
        parts.append(flag(name, draw(st.booleans())))
    for name in adjust.NAMES:
        if draw(st.booleans()):
            value = draw(decimals("0.01", "10", 2) | st.just(Decimal(1)))
            parts.append(factor(name, value, Decimal(1)))
    if draw(st.booleans()):
        parts.append(factor("blur", draw(decimals("0", "50", 2)), Decimal(0)))
    if draw(st.booleans()):
        parts.append(factor("sharpen", draw(decimals("0", "10", 2)), Decimal(0)))
    if draw(st.booleans()):
        size = draw(st.integers(1, pixelate.MAX_SIZE))
        spellings = one("pixelate", integers(size))
        parts.append([(), *spellings] if size == 1 else spellings)
    if draw(st.booleans()):
        parts += draw(marks())
    return parts


def spelling(parts: list[Part], chosen: st.DataObject) -> Query:
    """One spelling of each part, in an order of its own."""
    query = [pair for part in parts for pair in chosen.draw(st.sampled_from(part))]
    chosen.draw(st.randoms(use_true_random=False)).shuffle(query)
    assume(query)  # no parameters at all asks for the original, not a transformation
    return query


@given(transformations(), st.data())
def test_every_spelling_of_a_transformation_is_one_variant(
    parts: list[Part], chosen: st.DataObject
) -> None:
    first, second = spelling(parts, chosen), spelling(parts, chosen)
    note(f"{first=}\n{second=}")
    assert key(first) == key(second)


# The Spec written back as a query: its canonical spelling.


def written(wanted: spec.Spec) -> Query:
    query: Query = []
    for step in wanted.ops:
        match step:
            case trim.Trim(threshold=threshold):
                query.append(("trim", str(threshold)))
            case crop.Crop(left=left, top=top, width=width, height=height):
                query.append(("crop", f"{left},{top},{width},{height}"))
            case resize.Resize(width=width, height=height, fit=fit, gravity=gravity):
                query += [(side, str(n)) for side, n in (("w", width), ("h", height)) if n]
                query.append(("fit", fit))
                if fit in ("cover", "pad"):
                    query.append(("gravity", gravity))
                if step.enlarge:
                    query.append(("enlarge", ""))
            case pad.Pad(top=top, right=right, bottom=bottom, left=left):
                query.append(("pad", f"{top},{right},{bottom},{left}"))
            case rotate.Rotate(angle=angle):
                query.append(("rotate", repr(angle)))
            case flip.Flip() | flop.Flop() | grayscale.Grayscale():
                query.append((type(step).__name__.lower(), ""))
            case adjust.Adjust():
                query += [(n, repr(v)) for n, v in vars(step).items() if v != 1.0]
            case blur.Blur(sigma=sigma) | sharpen.Sharpen(sigma=sigma):
                query.append((type(step).__name__.lower(), repr(sigma)))
            case pixelate.Pixelate(size=size):
                query.append(("pixelate", str(size)))
            case watermark.Watermark():
                query += [
                    ("wm", step.image_id),
                    ("wm_gravity", step.gravity),
                    ("wm_x", str(step.offset_x)),
                    ("wm_y", str(step.offset_y)),
                    ("wm_opacity", repr(step.opacity)),
                ]
                if step.scale:
                    query.append(("wm_scale", repr(step.scale)))
            case _:
                raise AssertionError(f"no spelling for {step!r}")
    out = wanted.output
    # format=auto is negotiated again from the same Accept; said, not left out, so that a
    # transformation of the output alone (bg=ffffff) is not the original.
    query.append(("format", "auto" if out.animation else out.format))
    if out.quality:
        query.append(("q", str(out.quality)))
    query += [(name, "") for name in ("lossless", "progressive") if getattr(out, name)]
    if out.background != WHITE:
        query.append(("bg", bytes(out.background).hex()))
    if out.keep_metadata:
        query.append(("metadata", "keep"))
    if out.frames != "all":
        query.append(("frames", out.frames))
    return query


@given(transformations(), st.data())
def test_the_canonical_form_parses_back_to_itself(parts: list[Part], chosen: st.DataObject) -> None:
    wanted = parsed(spelling(parts, chosen))
    again = written(wanted)
    note(f"{again=}")
    assert parsed(again) == wanted
    # Equal Specs could still differ as text (1 and 1.0 are equal, and not as JSON).
    assert parsed(again).canonical() == wanted.canonical()


# Whatever the query, a 400 or a transformation the processor takes.

VALUES = st.text(st.sampled_from("0123456789.,-+eE:#abcfptruAF "), max_size=14) | st.text(
    max_size=6
)


def raw_values(param_name: str) -> st.SearchStrategy[str]:
    value = BY_NAME[param_name].value
    if isinstance(value, Choice):
        return st.sampled_from(list(value.options)) | VALUES
    if isinstance(value, Pattern):
        return st.from_regex(value.pattern, fullmatch=True) | VALUES
    if isinstance(value, resize.GravityValue):
        return st.sampled_from(list(value.names)) | st.from_regex(resize.FOCAL_POINT) | VALUES
    if isinstance(value, Flag):
        return st.sampled_from(["", "true", "false"]) | VALUES
    bounds = value.schema()
    numbers = st.floats(bounds["minimum"] - 1, bounds["maximum"] + 1).map(repr)
    return numbers | st.integers(-1, bounds["maximum"] + 1).map(str) | VALUES


NAMES = [param.name for param in PARAMETERS.table]


@st.composite
def queries(draw: st.DrawFn) -> Query:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=8, unique=True))
    return [(name, draw(raw_values(name))) for name in names]


@given(queries(), st.sampled_from([ACCEPT, "", "image/jpeg;q=0, image/*", "image/webp;q=x"]))
def test_the_gateway_accepts_nothing_the_processor_refuses(query: Query, accept: str) -> None:
    try:
        wanted = PARAMETERS.parse(query, accept)
    except HTTPProblem as problem:
        assert problem.status == 400
        assert problem.extensions["parameter"] in dict(query)
        return
    assert wanted is not None
    try:
        spec.parse(wanted.operations, wanted.output, LIMITS).key(IMAGE_ID)
    except ServiceError as exc:
        pytest.fail(f"the gateway took {query} and the processor refused it: {exc}")


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        (p.name, raw)
        for p in PARAMETERS.table
        if isinstance(p.value, Choice)
        for raw in p.value.options
    ],
)
def test_choices_are_lower_case_only(name: str, raw: str) -> None:
    """Words are spelled one way (hex colours alone take either case): CENTER is a 400,
    not a second variant of center."""
    shouted = raw.upper()
    with pytest.raises(HTTPProblem) as refused:
        PARAMETERS.values([(name, shouted)])
    assert refused.value.extensions["parameter"] == name


def test_a_spelling_the_properties_rely_on() -> None:
    """The spellings above really differ as text and agree as keys, and a different
    value is a different key, so the properties cannot pass by comparing nothing."""
    assert numbers(Decimal("2.5")) == ["0.25e+1", "2.5", "2.500", "2.5e0", "25.0e-1", "250.0E-02"]
    assert key([("w", "300"), ("dpr", "2")]) == key([("w", "0600")])
    assert key([("w", "300"), ("fit", "cover"), ("h", "200"), ("gravity", "fp:0,0.0")]) == key(
        [("h", "200"), ("w", "300"), ("fit", "cover"), ("gravity", "northwest")]
    )
    assert key([("rotate", "-90")]) == key([("rotate", "270.00")])
    assert key([("w", "300")]) != key([("w", "301")])
    assert key([("blur", "2")]) != key([("blur", "2.01")])


@given(st.integers(1, LIMITS.max_output_dimension), st.floats(-0.01, 0.01), st.booleans())
def test_the_gateway_and_the_processor_agree_on_sides_times_dpr_at_the_limit(
    side: int, off: float, width: bool
) -> None:
    """A dpr that puts w x dpr within a hair of the limit (half a pixel over it rounds
    up): both refuse it or both take it."""
    dpr = (LIMITS.max_output_dimension + 0.5 + off) / side
    assume(1 <= dpr <= 4)
    query = [("w" if width else "h", str(side)), ("dpr", repr(dpr))]
    try:
        wanted = PARAMETERS.parse(query, ACCEPT)
    except HTTPProblem:
        with pytest.raises(ServiceError):
            asked = ppb.Resize(width=side if width else 0, height=0 if width else side, dpr=dpr)
            spec.parse([ppb.Operation(resize=asked)], ppb.OutputOptions(), LIMITS)
        return
    assert wanted is not None
    spec.parse(wanted.operations, wanted.output, LIMITS)


@st.composite
def accepts(draw: st.DrawFn) -> tuple[frozenset[str], str]:
    """An Accept header naming some image formats with q above 0 and others with q=0 (or
    with a wildcard, which names none), in any order, case and spacing."""
    kinds = ["avif", "webp", "jxl", "png", "jpeg", "gif"]
    wanted = frozenset(draw(st.lists(st.sampled_from(kinds), unique=True)))
    others = [kind for kind in kinds if kind not in wanted]
    refused = draw(st.lists(st.sampled_from(others), unique=True)) if others else []
    items = [
        f"image/{kind}" + draw(st.sampled_from(["", ";q=1", "; q=0.5", ";Q=1.0"]))
        for kind in wanted
    ]
    items += [f"image/{kind};q=" + draw(st.sampled_from(["0", "0.0", "0.000"])) for kind in refused]
    items += draw(st.lists(st.sampled_from(["*/*", "image/*", "text/html", "*/*;q=0.8"])))
    items = [item.upper() if draw(st.booleans()) else item for item in items]
    draw(st.randoms(use_true_random=False)).shuffle(items)
    return wanted, draw(st.sampled_from([",", ", ", " ,  "])).join(items)


@given(accepts(), st.sampled_from([[], [("w", "300")], [("frames", "first")]]))
def test_every_spelling_of_an_accept_header_is_one_variant(
    accept: tuple[frozenset[str], str], query: Query
) -> None:
    """format=auto: what Accept names, not how, picks the variant."""
    named, spelled = accept
    plain = ",".join(f"image/{kind}" for kind in sorted(named))
    auto = [*query, ("format", "auto")]
    assert key(auto, spelled) == key(auto, plain)


def toml(name: str, raw: str) -> str:
    """A query value as a presets file writes it: typed as OpenAPI types the parameter."""
    kind = BY_NAME[name].schema["type"]
    if kind == "integer":
        return str(int(raw))
    if kind == "number":
        return repr(float(raw))
    if kind == "boolean":
        return "true" if raw in ("", "true") else "false"
    return json.dumps(raw)


@given(transformations(), st.data())
def test_a_preset_is_the_variant_of_its_parameters(
    parts: list[Part], chosen: st.DataObject
) -> None:
    """?preset=NAME is the very request it stands for: its values, typed in TOML and
    turned back into query text (gateway/presets.py), spell the same transformation."""
    query = spelling(parts, chosen)
    lines = ["[chosen]", *(f"{name} = {toml(name, raw)}" for name, raw in query)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "presets.toml"
        path.write_text("\n".join(lines) + "\n")
        presets = load_presets(str(path), PARAMETERS)
    note("\n".join(lines))
    wanted = presets.parse([("preset", "chosen")], PARAMETERS, ACCEPT)
    assert wanted is not None
    made = spec.parse(wanted.operations, wanted.output, LIMITS)
    assert made.key(IMAGE_ID) == key(query)
