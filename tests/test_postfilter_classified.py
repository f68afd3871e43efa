"""classified-linear: ALF-style classes of the decoded luma, one linear filter per group of classes.

Properties: the class map equals a plain reference loop and is the same from the decoder's float planes; the
decoder applies each position's own group filter; one group is cross-linear byte for byte; the layout fields
are bounded (hostile values refused with one line); the solve's predicted cost is what its filter measures;
resume == uninterrupted. Small synthetic frames and 4 frames of carphone (seconds).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from schemas.adapt import WeightPrior
from workers.errors import BitstreamError
from workers.fuzz_cases import frame_filter_update
from workers.postfilter.adapt import ClassifiedSearch, FilterAdaptConfig, adapt_filter, rebuild_filter
from workers.postfilter.checkpoint import LoadedFilter, make_metadata
from workers.postfilter.classes import ACTIVITY_CLASSES, ACTIVITY_THRESHOLDS, activity_classes, class_groups
from workers.postfilter.classified_solve import merge_path
from workers.postfilter.network import FilterArchitecture, PostFilter, filter_planes, planes_to_tensors
from workers.postfilter.update import (MAX_GROUPS, UpdateStructure, adapted_filter, classified_structure,
                                       make_filter_update)
from workers.postfilter.update_payload import _FIELDS, CodedUpdate, encode_update, transmitted_prior

QUICK_SEARCH = ClassifiedSearch(groups=(1, 3), ridge=(1e-4,), grid_scales=(0.5,), spike_weights=(0.3,))  # seconds


def reference_classes(luma: np.ndarray) -> np.ndarray:
    """The class map by plain loops: edge-replicated Laplacians summed per 4x4 block, thresholds counted."""
    height, width = luma.shape
    y = luma.astype(np.int64)
    at = lambda i, j: y[min(max(i, 0), height - 1), min(max(j, 0), width - 1)]  # noqa: E731
    out = np.zeros((height // 2, width // 2), dtype=np.int64)
    for r in range(height // 2):
        for c in range(width // 2):
            top, left = (2 * r) // 4 * 4, (2 * c) // 4 * 4
            total = 0
            for i in range(top, top + 4):
                for j in range(left, left + 4):
                    total += abs(2 * at(i, j) - at(i - 1, j) - at(i + 1, j)) + abs(2 * at(i, j) - at(i, j - 1) - at(i, j + 1))
            out[r, c] = sum(total >= t for t in ACTIVITY_THRESHOLDS)
    return out


def identity_base() -> PostFilter:
    """A filter whose output is its input exactly (zero tail: the residual is zero)."""
    model = PostFilter(FilterArchitecture(layers=2, channels=4)).eval()
    with torch.no_grad():
        model.tail.weight.zero_()
        model.tail.bias.zero_()
    return model


@pytest.mark.parametrize("size", [(8, 8), (10, 14), (18, 6)])
def test_activity_classes_equal_a_reference_loop(size):
    rng = np.random.default_rng(sum(size))
    smooth = np.add.outer(np.arange(size[0]) * 3, np.arange(size[1]) * 5) % 256
    for luma in (rng.integers(0, 256, size), (smooth + rng.integers(0, 3, size)) % 256, rng.integers(0, 9, size)):
        luma = luma.astype(np.uint8)
        assert np.array_equal(activity_classes(torch.from_numpy(luma)).numpy(), reference_classes(luma))


def test_class_map_is_the_same_from_the_decoders_float_planes():
    """The decoder sees y = uint8 / 255 in float32: rounding y * 255 gives every sample value back."""
    values = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(torch.round(values.float().div(255.0) * 255.0).to(torch.uint8), values)
    luma = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 12, 20)).astype(np.uint8))
    floats = luma.float().div(255.0)
    assert torch.equal(activity_classes(torch.round(floats * 255.0).to(torch.int32)), activity_classes(luma))
    classes = activity_classes(luma)
    assert classes.shape == (2, 6, 10) and int(classes.min()) >= 0 and int(classes.max()) < ACTIVITY_CLASSES


def test_decoder_applies_each_positions_group_filter():
    """Group g's filter only adds 4 g code values to U: the decoded U minus the input is 4 x the group the
    encoder's class map gives every chroma position."""
    rng = np.random.default_rng(3)
    luma = np.clip(np.add.outer(np.arange(24) * 9, np.zeros(32)) + rng.integers(0, 60, (24, 32)) * (np.arange(32) > 15), 0, 255).astype(np.uint8)
    planes = (luma, np.full((12, 16), 100, np.uint8), np.full((12, 16), 100, np.uint8))
    structure = classified_structure((2, 6, 11), tied=False)
    update = make_filter_update(identity_base(), structure)
    values = {name: torch.zeros(p.shape) for name, p in update.coded.items()}
    for g in range(structure.rank):
        values[f"g{g}__linear__bias"][4] = 4 * g / 255.0
    out = filter_planes(adapted_filter(identity_base(), update, values), planes, 30, "x264")
    expected = class_groups(structure.boundaries)[activity_classes(torch.from_numpy(luma))].numpy()
    assert len(np.unique(expected)) > 1
    assert np.array_equal((out[1].astype(np.int64) - 100) // 4, expected)
    assert np.array_equal(out[0], luma) and np.array_equal(out[2], planes[2])


@pytest.mark.parametrize("tied", [False, True])
def test_one_group_filters_exactly_like_cross_linear(tied):
    base = PostFilter(FilterArchitecture(layers=3, channels=8)).eval()
    update = make_filter_update(base, classified_structure((), tied))
    generator = torch.Generator().manual_seed(5)
    values = {name: torch.randn(p.shape, generator=generator) * 0.02 for name, p in update.coded.items()}
    reference = make_filter_update(base, UpdateStructure("cross-linear-tied" if tied else "cross-linear"))
    rng = np.random.default_rng(0)
    planes = tuple(rng.integers(0, 256, s).astype(np.uint8) for s in ((20, 28), (10, 14), (10, 14)))
    ours = filter_planes(adapted_filter(base, update, values), planes, 30, "x264")
    theirs = filter_planes(adapted_filter(base, reference, {n.split("__", 1)[1]: v for n, v in values.items()}),
                           planes, 30, "x264")
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))


def test_one_group_on_base_is_cross_linear_on_the_generic_frame():
    """classified-linear-on-base (wire id 7), one group: base output + L(its 8-bit frame - 0.5), L a cross-linear
    filter, against a direct conv; the zero update gives the generic frame byte for byte."""
    base = PostFilter(FilterArchitecture(layers=3, channels=8)).eval()
    with torch.no_grad():
        base.tail.weight.normal_(0.0, 0.01)
    update = make_filter_update(base, classified_structure((), False, "classified-linear-on-base"))
    generator = torch.Generator().manual_seed(6)
    values = {name: torch.randn(p.shape, generator=generator) * 0.02 for name, p in update.coded.items()}
    rng = np.random.default_rng(1)
    planes = tuple(rng.integers(0, 256, s).astype(np.uint8) for s in ((20, 28), (10, 14), (10, 14)))
    generic = filter_planes(base, planes, 30, "x264")
    zero = filter_planes(adapted_filter(base, update, {n: torch.zeros_like(v) for n, v in values.items()}), planes, 30, "x264")
    assert all(np.array_equal(a, b) for a, b in zip(zero, generic))
    ours = filter_planes(adapted_filter(base, update, values), planes, 30, "x264")
    with torch.no_grad():
        yb, ub, vb = base(*planes_to_tensors(planes), 30.0, "x264")
        g = [torch.from_numpy(p).double()[None, None] / 255.0 for p in generic]
        x = torch.cat([F.pixel_unshuffle(g[0], 2), g[1], g[2]], dim=1) - 0.5
        weight, bias = values["g0__linear__weight"].double(), values["g0__linear__bias"].double()
        c = F.conv2d(x, weight, bias, padding=1)
        expected = (yb.double() + F.pixel_shuffle(c[:, :4], 2), ub.double() + c[:, 4:5], vb.double() + c[:, 5:6])
    for got, want in zip(ours, expected):  # float32 against float64: at most one code value where x.5 ties
        diff = np.abs(got.astype(np.int64) - (want[0, 0] * 255).clamp(0, 255).round().numpy().astype(np.int64))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    assert any(not np.array_equal(a, b) for a, b in zip(ours, generic))


def test_on_base_payload_golden_bytes():
    """Pins wire id 7's frame and tables: fixed indices of a 3-group wide update -> fixed bytes (id 6's own
    golden test in tests/test_postfilter_adapt.py is unchanged)."""
    model = PostFilter(FilterArchitecture(layers=2, channels=4)).eval()
    structure = classified_structure((4, 9), True, "classified-linear-on-base", wide=True)
    indices = {name: torch.arange(p.numel()).reshape(p.shape) % 5 - 2
               for name, p in make_filter_update(model, structure).coded.items()}
    blob = encode_update(CodedUpdate(structure, transmitted_prior(WeightPrior(grid=0.004)), indices), "cd" * 32)
    assert blob[5] == 7 and blob[6] == 3
    assert (len(blob), hashlib.sha256(blob).hexdigest()[:16]) == (935, "7d51cd71d778eb14")


def test_layout_round_trips_and_bad_layouts_are_refused():
    for boundaries in [(), (1,), (5, 9), (1, 2, 3, 4, 5, 6, 7), (15,)]:
        for tied in (False, True):
            s = classified_structure(boundaries, tied)
            assert (s.boundaries, s.tied, s.rank, s.wide) == (boundaries, tied, len(boundaries) + 1, False)
            w = classified_structure(boundaries, tied, "classified-linear-on-base", wide=True)
            assert (w.boundaries, w.tied, w.wide) == (boundaries, True, True)
    with pytest.raises(ValueError):
        classified_structure(tuple(range(1, MAX_GROUPS + 1)), False)  # 9 groups
    with pytest.raises(ValueError, match="bits set beyond"):  # wire id 6 has no wide form
        UpdateStructure("classified-linear", 2, (1 << 31) | (1 << 30) | 4)
    with pytest.raises(ValueError, match="without the tied one"):
        UpdateStructure("classified-linear-on-base", 2, (1 << 30) | 4)


def test_wide_luma_rows_are_one_9x9_kernel_and_its_inner_taps_the_narrow_patch():
    """Each luma phase row of the wide tied form reads every offset of the 9x9 luma kernel exactly once (plus the
    inner 3x3 of U and V and the bias); the inner 3x3 taps of a 5x5 patch are the 3x3 patch (narrow_columns)."""
    from torch import nn

    from workers.postfilter.classified import group_shapes, group_tap_map
    from workers.postfilter.classified_solve import narrow_columns
    from workers.postfilter.linear_taps import coded_offsets

    coded = nn.ParameterDict({n: nn.Parameter(torch.zeros(shape)) for n, shape in group_shapes(True, True).items()})
    kernel = coded_offsets(coded)["luma__kernel"]
    table = group_tap_map(True, True)
    assert table.shape == (6, 151) and int(table.max()) + 1 == 242
    for p in range(4):
        row = table[p][table[p] >= 0]
        assert sorted(row[(row >= kernel) & (row < kernel + 81)].tolist()) == list(range(kernel, kernel + 81))
        assert len(row) == 81 + 18 + 1
    x = torch.rand(1, 6, 7, 9, dtype=torch.float64)
    wide = F.unfold(x, 5, padding=2)[0]
    assert torch.equal(wide[narrow_columns()[:-1]], F.unfold(x, 3, padding=1)[0])


def _sample_update(loaded: LoadedFilter, structure: UpdateStructure) -> bytes:
    generator = torch.Generator().manual_seed(2)
    indices = {name: torch.randint(-2, 3, p.shape, generator=generator)
               for name, p in make_filter_update(loaded.model, structure).coded.items()}
    prior = transmitted_prior(WeightPrior(grid=0.004))
    return encode_update(CodedUpdate(structure, prior, indices), loaded.metadata.weights_sha256)


@pytest.mark.parametrize("rank, layout, cause", [
    (0, 0, "1..8 groups"),
    (9, 0, "1..8 groups"),
    (255, 0, "1..8 groups"),
    (3, 0x45, "not increasing"),
    (2, 0x10, "bits set beyond"),
    (2, 0x0, "not increasing"),
    (2, 0x1F, "bits set beyond"),
    (1, 0x40000000, "bits set beyond"),
    (8, 0xFFFFFFFF, "bits set beyond"),
    (8, 0x0FFFFFFF, "not increasing"),
])
def test_hostile_group_count_and_boundaries_are_refused_with_one_line(rank, layout, cause):
    model = PostFilter(FilterArchitecture(layers=2, channels=4)).eval()
    loaded = LoadedFilter(model, make_metadata(model, "tiny"))
    blob = _sample_update(loaded, classified_structure((4,), False))
    version, number, _, _, base, *prior, bound = _FIELDS.unpack_from(blob, 4)
    crafted = frame_filter_update(blob[4 + _FIELDS.size: -4], number, rank, layout, base, tuple(prior), bound)
    with pytest.raises(BitstreamError) as info:
        rebuild_filter(loaded, loaded.metadata.weights_sha256, crafted, "x.h264")
    message = str(info.value)
    assert message.startswith("x.h264: ") and "\n" not in message and cause in message
    assert "invalid post-filter update header" in message


def test_another_valid_layout_behind_a_valid_crc_is_bounded():
    """2 tied groups' words under a header saying 3 full groups (CRC recomputed): refused with one line or
    decoded into a filter of the stated layout, never a crash (the CRC, not the layout, guards the words)."""
    model = PostFilter(FilterArchitecture(layers=2, channels=4)).eval()
    loaded = LoadedFilter(model, make_metadata(model, "tiny"))
    blob = _sample_update(loaded, classified_structure((4,), True))
    version, number, _, _, base, *prior, bound = _FIELDS.unpack_from(blob, 4)
    other = classified_structure((4, 9), False)
    crafted = frame_filter_update(blob[4 + _FIELDS.size: -4], number, other.rank, other.init_seed, base, tuple(prior), bound)
    try:
        rebuilt = rebuild_filter(loaded, loaded.metadata.weights_sha256, crafted, "x.h264")
    except BitstreamError as exc:
        assert str(exc).startswith("x.h264: ") and "\n" not in str(exc)
    else:
        assert rebuilt.groups == 3


def test_merge_path_gives_contiguous_groups_of_every_count():
    generator = torch.Generator().manual_seed(0)
    p = torch.randn(ACTIVITY_CLASSES, 55, 200, generator=generator, dtype=torch.float64)
    gram = p @ p.transpose(1, 2)
    cross = p @ torch.randn(ACTIVITY_CLASSES, 200, 6, generator=generator, dtype=torch.float64)
    path = merge_path(gram, cross, torch.ones(6, dtype=torch.float64), 1e-3)
    assert sorted(path) == list(range(1, MAX_GROUPS + 1))
    for groups, boundaries in path.items():
        assert len(boundaries) == groups - 1 and list(boundaries) == sorted(set(boundaries))
        classified_structure(boundaries, False)  # a valid layout


@pytest.fixture(scope="module")
def unit(carphone):
    from workers.standard.encoder import decode_stream, encode_planes

    torch.manual_seed(0)
    model = PostFilter(FilterArchitecture(layers=3, channels=8)).eval()
    with torch.no_grad():
        model.tail.weight.normal_(0.0, 0.01)
    loaded = LoadedFilter(model, make_metadata(model, "tiny-0"))
    originals = [carphone.frame_yuv420(i) for i in range(len(carphone))]
    data = encode_planes(originals, carphone.width, carphone.height, carphone.fps, "x264", 37.0, 12)
    return loaded, originals, decode_stream(data, "x264"), len(data)


@pytest.mark.parametrize("parameterisation", ["classified-linear", "classified-linear-on-base"])
def test_solved_update_pays_and_the_decoder_rebuilds_its_frames(unit, tmp_path, parameterisation):
    """Predicted RD change < 0 and measured: the adapted frames cost less than the generic ones in the RD
    measure; the frames the encoder reports are the decoder's byte for byte; a resumed unit gives the same bytes."""
    loaded, originals, decoded, _ = unit
    config = FilterAdaptConfig(parameterisation=parameterisation, classified=QUICK_SEARCH)
    logged = []
    result = adapt_filter(loaded, loaded.metadata.weights_sha256, originals, decoded, 37.0, "x264", config,
                          tmp_path, log=logged.append, lmbda=1.0)  # distortion dominates: 4 frames pay for the bytes
    d = result.decision
    assert d.decision == "adapted" and result.stats["structure"] == parameterisation
    assert logged[0]["predicted_cost_change"] < 0 and d.cost_adapted < min(d.cost_generic, d.cost_none)
    rebuilt = rebuild_filter(loaded, loaded.metadata.weights_sha256, result.blob)
    again = [filter_planes(rebuilt, p, 37.0, "x264") for p in decoded]
    assert all(np.array_equal(a, b) for fa, fb in zip(again, result.planes) for a, b in zip(fa, fb))
    resumed = adapt_filter(loaded, loaded.metadata.weights_sha256, originals, decoded, 37.0, "x264", config,
                           tmp_path, lmbda=1.0)
    assert resumed.stats["resumed_from"] == 1 and resumed.blob == result.blob
