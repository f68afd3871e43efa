"""Per-video post-filter updates: zero update == base, payload coding, decode == encoder, refusals, resume,
the decision. Tiny seeded filters on 4 frames of carphone coded by x264 (CPU, seconds)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from schemas.adapt import WeightPrior
from workers.adapt.payload import WeightUpdate, encode_payload, make_header
from workers.adapt.prior import ideal_bits
from workers.errors import BitstreamError, InputError
from workers.postfilter.adapt import (ClassifiedSearch, FilterAdaptConfig, LinearSystem, UpdateTraining, adapt_filter, codec_lambda,
                                      lambda_from_slope, local_slope_lambda, mean_psnr_yuv, mean_wmse, psnr_rd_weights,
                                      rebuild_filter, ridge_solution, tap_masks)
from workers.postfilter.checkpoint import LoadedFilter, make_metadata
from workers.postfilter.network import FilterArchitecture, PostFilter, filter_planes, planes_to_tensors
from workers.postfilter.update import (CrossLinearUpdate, UpdateStructure, adapted_filter, classified_structure,
                                       coded_shapes, make_filter_update, tied_luma_tap_map)
from workers.postfilter.update_payload import FIXED_BYTES, CodedUpdate, decode_update, encode_update, transmitted_prior
from workers.standard.encoder import decode_stream, encode_planes

PARAMETERISATIONS = ("scale-bias", "lora", "last-layer", "cross-linear", "cross-linear-tied", "classified-linear",
                     "classified-linear-on-base")
STRUCTURES = {"scale-bias": UpdateStructure("scale-bias"), "lora": UpdateStructure("lora", 2, 5),
              "last-layer": UpdateStructure("last-layer"), "cross-linear": UpdateStructure("cross-linear"),
              "cross-linear-tied": UpdateStructure("cross-linear-tied"),
              "classified-linear": classified_structure((3, 8), True),
              "classified-linear-on-base": classified_structure((2, 9), True, "classified-linear-on-base", wide=True)}
CRF = 37.0
FAST = UpdateTraining(steps=6, batch=2, crop=32, eval_every=3, eval_frames=2, checkpoint_every=2)
QUICK_SEARCH = ClassifiedSearch(groups=(1, 3), ridge=(1e-4,), grid_scales=(0.5,), spike_weights=(0.3,))  # seconds


def tiny_filter(seed: int) -> LoadedFilter:
    """A small random filter whose tail is not zero (an untrained filter would be the identity)."""
    torch.manual_seed(seed)
    model = PostFilter(FilterArchitecture(layers=3, channels=8)).eval()
    with torch.no_grad():
        model.tail.weight.normal_(0.0, 0.01)
    return LoadedFilter(model, make_metadata(model, f"tiny-{seed}"))


@pytest.fixture(scope="module")
def base() -> LoadedFilter:
    return tiny_filter(0)


def coded_frames(video, codec: str):
    originals = [video.frame_yuv420(i) for i in range(len(video))]
    data = encode_planes(originals, video.width, video.height, video.fps, codec, CRF, 12)
    return originals, decode_stream(data, codec)


@pytest.fixture(scope="module")
def frames(carphone):
    return coded_frames(carphone, "x264")


def _adapt(base, frames, parameterisation, tmp_path=None, **kwargs):
    """An adaptation whose update is sent: lambda 1 (x264's own is ~0.004 at CRF 37) makes distortion
    dominate, so a few steps on 4 frames pay for their bytes."""
    config = FilterAdaptConfig(parameterisation=parameterisation, training=FAST, send_update="always",
                               classified=QUICK_SEARCH, **kwargs)
    return adapt_filter(base, base.metadata.weights_sha256, *frames, CRF, "x264", config, tmp_path, lmbda=1.0)


@pytest.mark.parametrize("parameterisation", PARAMETERISATIONS[:3])
def test_zero_update_is_the_base_filter_exactly(base, parameterisation):
    update = make_filter_update(base.model, STRUCTURES[parameterisation])
    produced = update.weights({name: torch.zeros_like(p) for name, p in update.coded.items()})
    parameters = dict(base.model.named_parameters())
    assert produced and all(torch.equal(value, parameters[name]) for name, value in produced.items())


def test_zero_cross_linear_update_filters_exactly_like_the_base(base, frames):
    update = make_filter_update(base.model, STRUCTURES["cross-linear"])
    zero = adapted_filter(base.model, update, {name: torch.zeros_like(p) for name, p in update.coded.items()})
    y, u, v = planes_to_tensors(frames[1][0])
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(zero(y, u, v, CRF, "x264"), base.model(y, u, v, CRF, "x264")))


def test_solved_cross_linear_update_lowers_the_weighted_mse(base, frames):
    """On real x264 frames the least-squares filter, quantized and rebuilt from its bytes, beats the base:
    x264's CRF 37 output leaves a residual that a 3x3 cross-component filter partly predicts."""
    result = _adapt(base, frames, "cross-linear")
    originals, decoded = frames
    generic = [filter_planes(base.model, planes, CRF, "x264") for planes in decoded]
    assert mean_wmse(originals, result.planes) < 0.97 * mean_wmse(originals, generic)
    assert 0 < result.stats["update_bytes"] < 1000
    assert (result.stats["structure"], result.stats["coded_numbers"]) in (("cross-linear", 330), ("cross-linear-tied", 154))


def test_tied_luma_rows_are_one_full_resolution_kernel(base):
    """cross-linear-tied's luma correction is exactly a 5x5 convolution of the full-resolution luma (away from
    the borders, where the zero padding at chroma resolution differs), plus the shared chroma taps and bias."""
    update = make_filter_update(base.model, STRUCTURES["cross-linear-tied"])
    generator = torch.Generator().manual_seed(4)
    values = {name: torch.randn(p.shape, generator=generator) * 0.1 for name, p in update.coded.items()}
    values["luma__chroma"] = torch.zeros(2, 3, 3)
    adapted = adapted_filter(base.model, update, values)
    y, u, v = (torch.rand(1, 1, 32, 48, generator=generator),
               torch.rand(1, 1, 16, 24, generator=generator), torch.rand(1, 1, 16, 24, generator=generator))
    with torch.no_grad():
        got = adapted(y, u, v, CRF, "x264")[0] - base.model(y, u, v, CRF, "x264")[0]
        expected = torch.nn.functional.conv2d(y - 0.5, values["luma__kernel"][None, None], padding=2) + values["luma__bias"]
    assert torch.allclose(got[..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2], atol=1e-5)
    table = tied_luma_tap_map({"luma__kernel": 0, "luma__chroma": 25, "luma__bias": 43, "chroma__weight": 44, "chroma__bias": 152})
    for phase in range(4):  # every kernel offset once per phase row, every chroma-row number once in all
        assert sorted(table[phase][(table[phase] >= 0) & (table[phase] < 25)].tolist()) == list(range(25))
    assert sorted(table[table >= 44].tolist()) == list(range(44, 154))


@pytest.mark.parametrize("parameterisation", ("cross-linear", "classified-linear", "classified-linear-on-base"))
def test_solve_predicts_the_measured_cost(base, frames, parameterisation):
    """The least-squares solve's predicted RD change (normal equations + ideal bits + fixed bytes) is what the
    decoder's rebuilt filter measures on the frames, bytes of the real payload counted."""
    originals, decoded = frames
    lmbda = 0.05
    logged = []
    config = FilterAdaptConfig(parameterisation=parameterisation, send_update="always", classified=QUICK_SEARCH)
    result = adapt_filter(base, base.metadata.weights_sha256, originals, decoded, CRF, "x264", config, lmbda=lmbda,
                          log=logged.append)
    assert result.blob is not None
    d = result.decision
    measured = d.cost_adapted - d.cost_generic
    assert logged[0]["predicted_cost_change"] < 0
    assert measured == pytest.approx(logged[0]["predicted_cost_change"], rel=0.05, abs=2e-4)

@pytest.mark.parametrize("parameterisation", PARAMETERISATIONS)
def test_payload_round_trip_and_bits_near_ideal(base, parameterisation):
    prior = transmitted_prior(WeightPrior(grid=0.004))
    structure = STRUCTURES[parameterisation]
    shapes = coded_shapes(make_filter_update(base.model, structure))
    generator = torch.Generator().manual_seed(1)
    indices = {name: (torch.randn(shape, generator=generator) * 3).round().to(torch.int64) * (torch.rand(shape, generator=generator) < 0.2)
               for name, shape in shapes.items()}
    blob = encode_update(CodedUpdate(structure, prior, indices), base.metadata.weights_sha256)
    decoded = decode_update(blob, base.metadata.weights_sha256, lambda s: coded_shapes(make_filter_update(base.model, s)))
    assert decoded.structure == structure and decoded.prior == prior
    assert all(torch.equal(decoded.indices[n], k) for n, k in indices.items())
    flat = torch.cat([k.reshape(-1) for k in indices.values()])
    ideal = ideal_bits(prior, flat, max(1, int(flat.abs().max())))
    stream_bits = 8 * (len(blob) - FIXED_BYTES)
    assert ideal <= stream_bits <= ideal * 1.01 + 64


def test_payload_golden_bytes(base):
    """Pins the frame and the coding tables: fixed indices -> fixed bytes."""
    structure = STRUCTURES["scale-bias"]
    shapes = coded_shapes(make_filter_update(base.model, structure))
    indices = {name: torch.arange(int(np.prod(shape))).reshape(shape) % 5 - 2 for name, shape in shapes.items()}
    blob = encode_update(CodedUpdate(structure, transmitted_prior(WeightPrior(grid=0.004)), indices), "ab" * 32)
    assert (len(blob), hashlib.sha256(blob).hexdigest()[:16]) == (95, "d69a3efef5a6b3db")


def test_compact_header_vs_json_header():
    """Why update_payload.py exists: the shared payload's JSON header (formats 2/3) alone cost more than a small
    update. (Since payload format 4 the shared header is binary too: 39 bytes of framing for decoder-lora.)"""
    from pathlib import Path

    from workers.adapt.payload import payload_layout

    json_framing = payload_layout((Path(__file__).parent / "data" / "golden-format3-tiny-lora.payload").read_bytes())["header"]
    assert FIXED_BYTES + 200 < json_framing, (FIXED_BYTES, json_framing)  # 43 against 316 bytes


@pytest.mark.parametrize("parameterisation", PARAMETERISATIONS)
def test_decoder_rebuilds_the_encoders_filtered_frames(base, frames, parameterisation):
    result = _adapt(base, frames, parameterisation)
    assert result.decision.decision == "adapted" and result.blob
    assert result.decision.blob_bytes == len(result.blob) == result.stats["update_bytes"]
    rebuilt = rebuild_filter(base, base.metadata.weights_sha256, result.blob, "unit.h264")
    for planes, expected in zip(frames[1], result.planes):
        assert all(np.array_equal(a, b) for a, b in zip(filter_planes(rebuilt, planes, CRF, "x264"), expected))
    generic = [filter_planes(base.model, planes, CRF, "x264") for planes in frames[1]]
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(result.planes, generic))


def test_x265_unit_decodes_to_the_encoders_frames(base, carphone):
    frames = coded_frames(carphone, "x265")
    config = FilterAdaptConfig(parameterisation="scale-bias", training=FAST, send_update="always")
    result = adapt_filter(base, base.metadata.weights_sha256, *frames, CRF, "x265", config, lmbda=1.0)
    assert result.blob is not None
    rebuilt = rebuild_filter(base, base.metadata.weights_sha256, result.blob)
    for planes, expected in zip(frames[1], result.planes):
        assert all(np.array_equal(a, b) for a, b in zip(filter_planes(rebuilt, planes, CRF, "x265"), expected))


@pytest.fixture(scope="module", params=("scale-bias", "cross-linear"))
def sent_blob(base, frames, request) -> bytes:
    return _adapt(base, frames, request.param).blob


def test_update_for_another_base_filter_is_refused(sent_blob):
    other = tiny_filter(1)
    with pytest.raises(BitstreamError, match="another base filter") as info:
        rebuild_filter(other, other.metadata.weights_sha256, sent_blob, "x.h264")
    assert "\n" not in str(info.value) and str(info.value).startswith("x.h264: ")


def test_corrupted_or_truncated_update_is_refused(base, sent_blob):
    sha = base.metadata.weights_sha256
    damaged = [sent_blob[:n] for n in (0, 3, 10, 40, len(sent_blob) - 1)] + [sent_blob + b"\x00"]
    for position in range(0, len(sent_blob), max(1, len(sent_blob) // 25)):
        flipped = bytearray(sent_blob)
        flipped[position] ^= 0x10
        damaged.append(bytes(flipped))
    for data in damaged:
        with pytest.raises(BitstreamError) as info:
            rebuild_filter(base, sha, data, "x.h264")
        assert "\n" not in str(info.value) and str(info.value).startswith("x.h264: ")


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("parameterisation", ("scale-bias", "last-layer", "cross-linear"))
def test_resumed_adaptation_equals_uninterrupted(base, frames, tmp_path, parameterisation):
    reference = _adapt(base, frames, parameterisation, tmp_path / "a")

    def interrupt(record):
        if record["step"] == (4 if parameterisation == "scale-bias" else 1):
            raise _Interrupt
    config = FilterAdaptConfig(parameterisation=parameterisation, training=FAST, send_update="always",
                               classified=QUICK_SEARCH)
    with pytest.raises(_Interrupt):
        adapt_filter(base, base.metadata.weights_sha256, *frames, CRF, "x264", config, tmp_path / "b", log=interrupt,
                     lmbda=1.0)
    assert list((tmp_path / "b").glob("*.safetensors")) and not list((tmp_path / "b").glob(".*.tmp"))
    resumed = _adapt(base, frames, parameterisation, tmp_path / "b")
    assert resumed.stats["resumed_from"] == (4 if parameterisation == "scale-bias" else 1)
    assert resumed.blob == reference.blob and reference.blob is not None
    assert all(np.array_equal(a, b) for fa, fb in zip(resumed.planes, reference.planes) for a, b in zip(fa, fb))


def test_checkpoint_of_another_config_is_refused(base, frames, tmp_path):
    _adapt(base, frames, "scale-bias", tmp_path)
    with pytest.raises(InputError, match="another adaptation config"):
        _adapt(base, frames, "scale-bias", tmp_path, seed=1)


def test_an_update_that_does_not_pay_is_not_sent(base, frames):
    config = FilterAdaptConfig(parameterisation="scale-bias", training=FAST)
    result = adapt_filter(base, base.metadata.weights_sha256, *frames, CRF, "x264", config, lmbda=1e-9)
    assert result.blob is None and result.decision.decision in ("none", "generic")
    expected = frames[1] if result.decision.decision == "none" else [filter_planes(base.model, p, CRF, "x264") for p in frames[1]]
    assert all(np.array_equal(a, b) for fa, fb in zip(result.planes, expected) for a, b in zip(fa, fb))


@pytest.mark.parametrize("parameterisation", PARAMETERISATIONS)
@pytest.mark.parametrize("stream_bytes", (None, 3000))
def test_decision_is_never_costlier_than_generic_or_none(base, frames, parameterisation, stream_bytes):
    """In wMSE at the QP relation (no stream size given) and in PSNR-YUV (the stream's size given)."""
    config = FilterAdaptConfig(parameterisation=parameterisation, training=FAST, classified=QUICK_SEARCH)
    result = adapt_filter(base, base.metadata.weights_sha256, *frames, CRF, "x264", config, stream_bytes=stream_bytes)
    d = result.decision
    assert d.lambda_source.startswith("qp-relation" if stream_bytes is None else "psnr-yuv")
    chosen = {"none": d.cost_none, "generic": d.cost_generic, "adapted": d.cost_adapted}[d.decision]
    assert chosen <= min(d.cost_none, d.cost_generic)
    assert (result.blob is not None) == (d.decision == "adapted")
    json.dumps(d.to_dict())  # the record goes into result.json


def test_psnr_rd_weights_predict_the_change_of_psnr_yuv(frames):
    """The psnr-yuv RD measure's weighted MSE is PSNR-YUV's first-order change: lambda * sum_p w_p dMSE_p is
    -lambda * dPSNR-YUV for a small change of luma and of chroma, and a chroma MSE change weighs more per unit
    than a luma one in proportion to MSE_Y / MSE_U. One frame: over several, the weights are exact for a change
    whose size relative to each frame's MSE is the same in every frame."""
    originals, decoded = frames[0][:1], frames[1][:1]
    lmbda, weights = psnr_rd_weights(originals, decoded, FilterAdaptConfig(log_rate_per_db=0.2), 5000)
    pixels = decoded[0][0].size * len(decoded)
    assert lmbda == pytest.approx(0.2 * 8 * 5000 / pixels)
    for plane in (0, 1):
        changed = [tuple(np.where((np.indices(p.shape).sum(0) % 7 == 0) & (p < 250), p + 1, p).astype(np.uint8)
                         if i == plane else p for i, p in enumerate(frame)) for frame in decoded]
        predicted = mean_wmse(originals, changed, weights) - mean_wmse(originals, decoded, weights)
        actual = mean_psnr_yuv(originals, decoded) - mean_psnr_yuv(originals, changed)
        assert predicted == pytest.approx(actual, rel=0.15)
    inverse = np.mean([[1 / np.mean((o.astype(float) - d.astype(float)) ** 2) for o, d in zip(fo, fd)]
                       for fo, fd in zip(originals, decoded)], axis=0)
    assert weights[1] / weights[0] == pytest.approx((1 / 6) * inverse[1] / inverse[0])


def test_codec_lambda_and_slope():
    assert codec_lambda(12, "x264") == pytest.approx(1 / 0.85)
    assert codec_lambda(15, "x264") == pytest.approx(codec_lambda(12, "x264") / 2)
    assert codec_lambda(32, "x265") > codec_lambda(32, "x264")
    assert lambda_from_slope([(0.10, 40.0), (0.08, 50.0), (0.06, 60.0)]) == pytest.approx(0.002)


def test_local_slope_lambda_is_positive_and_near_the_qp_relation(carphone, frames):
    originals, decoded = frames
    data = encode_planes(originals, carphone.width, carphone.height, carphone.fps, "x264", CRF, 12)
    value = local_slope_lambda(originals, decoded, len(data), carphone.fps, "x264", CRF, 12)
    assert 0.05 < value / codec_lambda(CRF, "x264") < 20


def test_bad_frames_are_refused_with_one_line(base, frames):
    originals, decoded = frames
    with pytest.raises(InputError, match="as many originals"):
        adapt_filter(base, base.metadata.weights_sha256, originals[:2], decoded, CRF, "x264")
    with pytest.raises(InputError, match="one size"):
        adapt_filter(base, base.metadata.weights_sha256, originals, [tuple(p[:8, :8] for p in decoded[0])] + decoded[1:],
                     CRF, "x264")


def _system(structure: str, seed: int = 3) -> tuple[LinearSystem, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    samples = torch.randn(2000, 55, generator=generator, dtype=torch.float64)
    gram, cross = samples.t() @ samples, samples.t() @ torch.randn(2000, 6, generator=generator, dtype=torch.float64)
    update = make_filter_update(PostFilter(FilterArchitecture(layers=2, channels=1)), UpdateStructure(structure))
    return LinearSystem.build(structure, update.tap_map(), gram, cross, torch.ones(6, dtype=torch.float64)), gram, cross


def test_cross_linear_tap_masks_are_honoured_by_the_solve():
    """Sparser patterns are exact zeros where the mask forbids a tap, and the full mask is the plain solve."""
    system, gram, cross = _system("cross-linear")
    masks = tap_masks("cross-linear", 55)
    for mask in masks.values():
        solution = ridge_solution(system, 1e-4, system.allowed(mask))
        assert not bool(solution[system.table[~mask]].any())
    assert masks["luma-from-luma"][:4, 36:54].sum() == 0 and masks["luma-from-luma"][:, 54].all()
    full = ridge_solution(system, 0.0, system.allowed(masks["all"]))
    assert torch.allclose(full[system.table].t(), torch.linalg.solve(gram, cross))
    assert list(tap_masks("last-layer", 289)) == ["all"]


def test_tied_solve_is_the_least_squares_fit_of_the_shared_numbers():
    """The tied luma rows are solved jointly: at the solution the summed gradient of the 4 rows' distortion
    with respect to every shared number is zero, and the distortion lies between the untied optimum and zero."""
    system, gram, cross = _system("cross-linear-tied")
    untied, _, _ = _system("cross-linear")
    assert [len(g) for g in system.groups] == [44, 55, 55]
    q = ridge_solution(system, 0.0, torch.ones(154, dtype=torch.bool))
    assert torch.allclose(system.a @ q, system.b, atol=1e-8)
    best = ridge_solution(untied, 0.0, torch.ones(330, dtype=torch.bool))
    assert untied.distortion(best) < system.distortion(q) < 0
