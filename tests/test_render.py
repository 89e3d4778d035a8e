"""The palette overlay: exact pixels on known label maps, and the optional extras."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamer.core.types import Box, ParseResult, Person
from streamer.vision.render import (
    CIHP_CLASSES,
    CIHP_COLORS,
    OUTLINE_COLOR,
    PALETTE,
    PERSON_ONLY,
    PERSON_ONLY_COLOR,
    OverlayStyle,
    Renderer,
    blend_exact,
    box_color,
    class_name,
    make_palette,
    voc_color,
)

H, W = 90, 120


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _labels() -> np.ndarray:
    """Background border and stripes; every CIHP class 1-20 and PERSON_ONLY, in the middle."""
    labels = np.zeros((H, W), np.uint8)
    ids = [*range(1, 21), PERSON_ONLY]
    for i, k in enumerate(ids):
        labels[10:80, 10 + 4 * i: 14 + 4 * i] = k
    labels[40:50, 20:30] = 0  # a background hole inside the foreground
    return labels


def _result(labels: np.ndarray | None = None, persons: list[Person] | None = None) -> ParseResult:
    return ParseResult(_labels() if labels is None else labels, CIHP_CLASSES, None, persons or [])


def test_palette_is_fixed_and_documented() -> None:
    assert PALETTE.shape == (256, 3) and PALETTE.dtype == np.uint8
    assert not PALETTE.flags.writeable
    assert np.array_equal(PALETTE, make_palette())  # same in every run
    assert PALETTE[: len(CIHP_COLORS)].tolist() == [list(c) for c in CIHP_COLORS]
    assert len(CIHP_CLASSES) == len(CIHP_COLORS) == 21
    assert tuple(PALETTE[PERSON_ONLY]) == PERSON_ONLY_COLOR
    # CIHP / LIP annotation colours = the PASCAL VOC colour map.
    assert [voc_color(k) for k in range(21)] == list(CIHP_COLORS)
    assert PALETTE[2].tolist() == [0, 128, 0] and PALETTE[13].tolist() == [192, 0, 128]
    assert len({tuple(c) for c in PALETTE.tolist()}) == 256  # every id its own colour


@pytest.mark.parametrize("alpha", [0.5, 0.25, 0.75, 3 / 256])
def test_overlay_is_exact_blend(alpha: float) -> None:
    image, labels = _image(), _labels()
    before = image.copy()
    out = Renderer(OverlayStyle(alpha=alpha)).render(image, _result(labels))
    assert out is not image and out.dtype == np.uint8 and out.shape == image.shape
    assert np.array_equal(image, before)  # input untouched
    # Background: the input, bit for bit.
    assert np.array_equal(out[labels == 0], image[labels == 0])
    # Each class: round-half-even of the float64 blend with its documented colour.
    for k in np.unique(labels[labels != 0]):
        mask = labels == k
        want = np.rint((1 - alpha) * image[mask].astype(np.float64)
                       + alpha * np.array(PALETTE[k], np.float64)).astype(np.uint8)
        assert np.array_equal(out[mask], want), f"class {k}"
    assert np.array_equal(out, blend_exact(image, labels, alpha))


def test_overlay_other_alphas_within_one() -> None:
    image, labels = _image(1), _labels()
    for alpha in (0.3, 0.1, 0.9):
        out = Renderer(OverlayStyle(alpha=alpha)).render(image, _result(labels))
        diff = np.abs(out.astype(int) - blend_exact(image, labels, alpha).astype(int))
        assert diff.max() <= 1
        assert np.array_equal(out[labels == 0], image[labels == 0])


def test_solid_overlay_shows_each_documented_colour() -> None:
    image, labels = _image(2), _labels()
    out = Renderer(OverlayStyle(alpha=1.0)).render(image, _result(labels))
    for k in range(1, 21):
        assert (out[labels == k] == CIHP_COLORS[k]).all(), CIHP_CLASSES[k]
    assert (out[labels == PERSON_ONLY] == PERSON_ONLY_COLOR).all()
    zero = Renderer(OverlayStyle(alpha=0.0)).render(image, _result(labels))
    assert np.array_equal(zero, image)


def test_label_dtypes_and_class_counts() -> None:
    image, labels = _image(3), _labels()
    want = Renderer().render(image, _result(labels))
    for dtype in (np.int32, np.int64, np.uint16):
        got = Renderer().render(image, _result(labels.astype(dtype)))
        assert np.array_equal(got, want), dtype
    # A model with 200 classes: ids beyond CIHP's use the rest of the palette.
    many = np.arange(H * W).reshape(H, W) % 200
    out = Renderer(OverlayStyle(alpha=1.0)).render(image, ParseResult(many, ()))
    assert np.array_equal(out[many != 0], PALETTE[many[many != 0]])
    with pytest.raises(ValueError, match="between 0 and 255"):
        Renderer().render(image, ParseResult(np.full((H, W), 300), ()))
    with pytest.raises(ValueError, match="does not match"):
        Renderer().render(image, ParseResult(np.zeros((H, W + 1), np.uint8), ()))
    with pytest.raises(ValueError):
        OverlayStyle(alpha=1.5)


def test_all_background_and_full_foreground() -> None:
    image = _image(4)
    out = Renderer(OverlayStyle(outlines=True, legend=True)).render(
        image, _result(np.zeros((H, W), np.uint8)))
    assert np.array_equal(out, image) and out is not image
    full = np.full((H, W), 5, np.uint8)  # foreground touching every edge of the frame
    out = Renderer().render(image, _result(full))
    assert np.array_equal(out, blend_exact(image, full, 0.5))


def test_non_contiguous_image() -> None:
    big = _image(5)
    view = big[:, ::-1]  # a negative-stride view, as from a flip
    out = Renderer().render(view, _result())
    assert np.array_equal(out, blend_exact(np.ascontiguousarray(view), _labels(), 0.5))


def _outline_reference(labels: np.ndarray) -> np.ndarray:
    """Foreground pixels whose 8-neighbourhood (inside the frame) holds another label."""
    padded = np.pad(labels, 1, mode="edge")
    edge = np.zeros(labels.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            edge |= padded[1 + dy: 1 + dy + H, 1 + dx: 1 + dx + W] != labels
    return edge & (labels != 0)


def test_outlines_only_on_part_boundaries() -> None:
    image, labels = _image(6), _labels()
    labels[60:70, 70:95] = 0
    plain = Renderer().render(image, _result(labels))
    out = Renderer(OverlayStyle(outlines=True)).render(image, _result(labels))
    edge = _outline_reference(labels)
    assert edge.sum() > 100
    assert (out[edge] == OUTLINE_COLOR).all()
    assert np.array_equal(out[~edge], plain[~edge])


def test_boxes_draw_on_the_box_border() -> None:
    image, labels = _image(7), _labels()
    box = Box(30, 40, 100, 85)
    result = _result(labels, [Person(3, 0.9, box)])
    plain = Renderer().render(image, result)
    out = Renderer(OverlayStyle(boxes=True)).render(image, result)
    color = box_color(3)
    # The outermost two pixels of the box, all round (the tag sits above the top-left corner).
    for ring in (0, 1):
        assert (out[box.y1 - 1 - ring, box.x0 + 30: box.x1] == color).all()
        assert (out[box.y0 + ring, box.x0 + 30: box.x1] == color).all()
        assert (out[box.y0:box.y1, box.x0 + ring] == color).all()
        assert (out[box.y0:box.y1, box.x1 - 1 - ring] == color).all()
    # The inside and everything outside the box (bar the id tag) are unchanged.
    assert np.array_equal(out[box.y0 + 2: box.y1 - 2, box.x0 + 2: box.x1 - 2],
                          plain[box.y0 + 2: box.y1 - 2, box.x0 + 2: box.x1 - 2])
    changed = np.argwhere((out != plain).any(axis=2))
    in_box = ((changed[:, 0] >= box.y0) & (changed[:, 0] < box.y1)
              & (changed[:, 1] >= box.x0) & (changed[:, 1] < box.x1))
    in_tag = ((changed[:, 0] >= box.y0 - 25) & (changed[:, 0] < box.y0)
              & (changed[:, 1] >= box.x0) & (changed[:, 1] < box.x0 + 30))
    assert (in_box | in_tag).all()
    assert in_tag.any()  # the id tag is drawn
    # Distinct ids, distinct colours.
    assert box_color(1) != box_color(2)


def test_legend_lists_present_classes_in_its_corner() -> None:
    image = _image(8)
    labels = np.zeros((H, W), np.uint8)
    labels[50:80, 60:70] = 2
    labels[50:80, 70:80] = 13
    labels[50:60, 80:90] = PERSON_ONLY
    result = _result(labels)
    renderer = Renderer(OverlayStyle(legend=True))
    assert renderer.legend_entries(result) == [(2, "Hair"), (13, "Face"), (PERSON_ONLY, "person")]
    plain = Renderer().render(image, result)
    out = renderer.render(image, result)
    box = renderer.legend_box(result, image.shape)
    assert box is not None and box.x0 > 0 and box.y0 > 0
    changed = np.argwhere((out != plain).any(axis=2))
    assert len(changed) > 0
    assert (changed[:, 0] >= box.y0).all() and (changed[:, 0] < box.y1).all()
    assert (changed[:, 1] >= box.x0).all() and (changed[:, 1] < box.x1).all()
    # Each class's swatch is in the legend.
    legend = out[box.y0:box.y1, box.x0:box.x1].reshape(-1, 3)
    for k in (2, 13, PERSON_ONLY):
        assert (legend == PALETTE[k]).all(axis=1).any()
    assert class_name(99, CIHP_CLASSES) == "class 99"


def test_all_extras_together_leave_input_alone() -> None:
    image = _image(9)
    before = image.copy()
    style = OverlayStyle(alpha=0.6, outlines=True, boxes=True, legend=True)
    result = _result(persons=[Person(1, 0.8, Box(0, 0, W, H)), Person(2, 0.5, Box(5, 5, 8, 8))])
    out = Renderer(style).render(image, result)
    assert np.array_equal(image, before)
    assert out.shape == image.shape and not np.array_equal(out, image)


def test_people_apart_render_as_one_blend_of_the_whole_frame() -> None:
    # People far apart are blended region by region; the pixels are those of the overlay's
    # definition over the whole frame, outlines (that look one pixel past each region) too.
    image = _image(7)
    labels = np.zeros((H, W), np.uint8)
    labels[5:40, 2:18] = 5
    labels[20:30, 6:12] = 13
    labels[50:89, 40:60] = 9  # 22 background columns from the first: its own region
    labels[0:10, 75:119] = 2  # ... and this one, touching the frame's top and right edges
    labels[60:80, 62:66] = 14  # 2 columns from the second: the same region as it
    plain = Renderer().render(image, _result(labels))
    assert np.array_equal(plain, blend_exact(image, labels, 0.5))
    out = Renderer(OverlayStyle(outlines=True)).render(image, _result(labels))
    edge = _outline_reference(labels)
    assert (out[edge] == OUTLINE_COLOR).all()
    assert np.array_equal(out[~edge], plain[~edge])


def test_real_frame_overlay_matches_its_definition() -> None:
    clip = Path(__file__).resolve().parents[1].parent / "shared/media/videos/chaplin_bw.mp4"
    if not clip.is_file():
        pytest.skip(f"needs the shared clip {clip}")
    import av

    with av.open(str(clip)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    h, w = frame.shape[:2]
    labels = np.zeros((h, w), np.uint8)
    rng = np.random.default_rng(0)
    for i, x in enumerate((40, 260, 480)):  # three people side by side, parts of 1-20
        labels[40:320, x:x + 110] = rng.integers(0, 21, (280, 110), dtype=np.uint8)
        labels[60 + 20 * i:300, x + 20:x + 90] = 5 + i
    persons = [Person(i + 1, 0.9, Box(x, 40, x + 110, 320)) for i, x in enumerate((40, 260, 480))]
    result = ParseResult(labels, CIHP_CLASSES, None, persons)
    assert np.array_equal(Renderer().render(frame, result), blend_exact(frame, labels, 0.5))
    out = Renderer(OverlayStyle(alpha=0.4)).render(frame, result)
    diff = np.abs(out.astype(int) - blend_exact(frame, labels, 0.4).astype(int))
    assert diff.max() <= 1 and not diff[labels == 0].any()
