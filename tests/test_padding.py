"""`--padding compressai`: frames padded as CompressAI's video eval pads them, signalled in the header.

The pad amounts below were printed by CompressAI 1.2.8 itself (what its eval_model's ``pad`` calls),
in /work/cai-venv (scripts/make_compressai_fixture.py says how to make it):
    python -c "from compressai.ops import compute_padding; print(compute_padding(144, 176, min_div=128)[0])"
(left, right, top, bottom): 144x176 -> (40, 40, 56, 56), 48x80 -> (24, 24, 40, 40),
1080x1920 -> (0, 0, 36, 36), 240x416 -> (48, 48, 8, 8).
"""

from __future__ import annotations

import json

import pytest
import torch

from adaptjobs.cli import main
from workers.bitstream import header_json, unpack_header
from workers.codec.ssf import FramePadding
from workers.codecs.ssf import SSFCodec, checked_settings
from workers.errors import InputError

COMPRESSAI_PADS = {(144, 176): (40, 40, 56, 56), (48, 80): (24, 24, 40, 40), (1080, 1920): (0, 0, 36, 36),
                   (240, 416): (48, 48, 8, 8)}


@pytest.mark.parametrize("size", sorted(COMPRESSAI_PADS))
def test_compressai_padding_matches_compressai(size):
    height, width = size
    left, right, top, bottom = COMPRESSAI_PADS[size]
    padding = FramePadding.of("compressai", height, width)
    assert padding.padded == (height + top + bottom, width + left + right)
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0)) + 0.5  # nowhere zero
    padded = padding.pad(x)
    assert torch.equal(padded[..., top: top + height, left: left + width], x)
    assert int((padded != 0).sum()) == x.numel()  # zeros everywhere else
    assert torch.equal(padding.crop(padded), x)
    assert padding.padded[0] % 128 == 0 and padding.padded[1] % 128 == 0  # no latent is padded for its hyperprior


def test_default_padding_is_unchanged():
    x = torch.rand(1, 3, 144, 176)
    padding = FramePadding.of(None, 144, 176)
    assert padding.padded == (144, 176) and torch.equal(padding.crop(padding.pad(x)), x)
    odd = FramePadding.of("adaptjobs", 40, 72)
    assert odd.padded == (48, 80) and torch.equal(odd.pad(x[..., :40, :72])[..., 47, :72], x[..., 39, :72])


def _encode(tmp_path, carphone_path, checkpoint, name, *extra):
    out, recon = tmp_path / f"{name}.bits", tmp_path / f"{name}.y4m"
    assert main(["encode", str(carphone_path), "-o", str(out), "--model", str(checkpoint), "--frames", "3",
                 "--intra-period", "0", "--recon", str(recon), *extra]) == 0
    return out, recon


def test_cli_padding_compressai_round_trip(tmp_path, carphone_path, tiny_checkpoint):
    """encode verifies decode == recon itself; here the decoder learns the mode from the header alone."""
    plain, _ = _encode(tmp_path, carphone_path, tiny_checkpoint, "plain")
    padded, recon = _encode(tmp_path, carphone_path, tiny_checkpoint, "padded", "--padding", "compressai")
    header, _ = unpack_header(padded.read_bytes())
    assert header.padding == "compressai"
    plain_header, _ = unpack_header(plain.read_bytes())
    assert plain_header.padding is None and b"padding" not in header_json(plain_header)
    assert padded.read_bytes() != plain.read_bytes()
    decoded = tmp_path / "decoded.y4m"
    assert main(["decode", str(padded), "-o", str(decoded), "--model", str(tiny_checkpoint)]) == 0
    assert decoded.read_bytes() == recon.read_bytes()


def test_codec_set_padding_is_the_same_option(tmp_path, carphone_path, tiny_checkpoint):
    by_option, _ = _encode(tmp_path, carphone_path, tiny_checkpoint, "a", "--padding", "compressai")
    by_setting, _ = _encode(tmp_path, carphone_path, tiny_checkpoint, "b", "--codec-set", "padding=compressai")
    assert by_option.read_bytes() == by_setting.read_bytes()


def test_submit_settings(tiny_checkpoint):
    run = SSFCodec.resolve(str(tiny_checkpoint), None, {"padding": "compressai"})
    assert run.settings == {"padding": "compressai"}
    assert SSFCodec.load(run.point(run.qualities[0])).padding == "compressai"
    assert checked_settings({"padding": "adaptjobs"}) == {}  # the default leaves run specs as they were
    with pytest.raises(InputError, match="padding must be one of"):
        checked_settings({"padding": "zeros"})
    with pytest.raises(InputError, match="padding only"):
        checked_settings({"preset": "slow"})


def test_encoder_adaptation_refuses_compressai_padding(carphone, tiny_model):
    codec = SSFCodec(tiny_model, "compressai")
    with pytest.raises(InputError, match="encoder-side adaptation"):
        codec.encode(carphone, 0, inter_encoder=lambda index, intra_hat: tiny_model.model)


def test_header_refuses_unknown_padding(carphone, tiny_model):
    from pydantic import ValidationError

    from schemas.bitstream import BitstreamHeader

    fields = json.loads(header_json(SSFCodec(tiny_model).header(carphone, 0)))
    assert "padding" not in fields
    assert BitstreamHeader.model_validate({**fields, "padding": "compressai"}).padding == "compressai"
    with pytest.raises(ValidationError):
        BitstreamHeader.model_validate({**fields, "padding": "reflect"})
