"""Golden bytes: the exact sha256 of the files a tiny seeded model writes, and of x264/x265 streams.

A round trip cannot notice a silent change of the coding tables (float32 instead of float64, another scale
table, another symbol order): encoder and decoder change together and still agree, while every stream
written before the change stops decoding. These hashes can. They pin bitstream format 4 (`.bits`) and
payload format 4 (`.payload`) as written by the CLI on 3 frames of carphone (176x144) with the `tiny`
architecture (seed 0) and one torch thread, and the Annex B streams of workers.standard.encoder on 3
frames of a 64x48 crop (one encoder thread: the same bytes on every machine).

If one of these fails, a change altered what goes on the wire. That is only acceptable together with a
new format version (and a decoder that still reads the old one); then update the hash here.

Bitstream format 4 (issue 14: latent symbols beyond their table are escape-coded instead of clamped) changed
the latent coding model of every stream (the table edges are now the escape symbols), so the `.bits` hashes
were updated once for it. tests/data/golden-format3-tiny.bits is a format-3 stream written by the format-3
encoder (commit 6bcb0d9, same command as test_plain_encode_bytes plus --recon) and must keep decoding to
that encoder's reconstruction.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from adaptjobs.cli import main
from tests.conftest import crop_planes

SSF_GOLDEN = {
    "encode": "ec727c24ae9a74fae156be40c9c1b730c2655325792f45ee487c55c36bcc8b24",
    # payload format 3 (issue 11: the tensor fingerprint covers the method and structure, init_seed included)
    # changed the payload bytes, and the .bits header carries the payload sha256; encode/gop-adapters unchanged
    # issue 14: decoder-lora training (grid-tied lr with warm-up + cosine, best state by the sequence RD cost)
    # changed the trained update; format 4 (escape-coded latents) changed every .bits (updated once, for both, at their merge)
    # payload format 4 (binary header, 39 bytes of framing instead of 316): same update and reconstruction, the
    # payload 278 bytes shorter (66,433 -> 66,155), and the .bits header carries the new payload's sha256
    # issue 14 (lorafix): the payload is coded under a prior fitted to its indices (payload.fitted_coding_prior,
    # same grid): same update and reconstruction (PSNR-RGB 7.46 dB), payload 66,155 -> 30,797 bytes; the .bits
    # header carries the new payload's sha256
    # issue 14 (lora2): payload format 5 (a biases byte in the header; here it says "no biases": the biases'
    # indices are all zero after the test's 2 steps, so the group is left out): 30,797 -> 30,798 bytes,
    # PSNR-RGB still 7.46 dB; the .bits header carries the new payload's sha256
    "decoder-lora.bits": "dab93c6ae5b24c37e1e76b6bbf818e06d4890e2bcdb5cb0d5f6eb2504453f844",
    "decoder-lora.payload": "c1e61371fb9a356739741c70ae5090687806f32328a4750271f49c56a7167f45",
    "gop-adapters.bits": "fcf03b218e4c89f6f00e8afe6f9885b0d1017b879c4c59ca814692a4a1a2575e",
}
STANDARD_GOLDEN = {"x264": "1fc47ce67a303ff5def92803337653a77f8a6f891d11a7a905c2a93a704afe85",
                   "x265": "58ca1d349836f8f03b982002fc07531cd14ff337f62cd7f47215abe70e62f147"}

FRAMES = "3"


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread while the streams are made (the header records it; more threads give other sums)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def seeded_checkpoint(tmp_path_factory, one_thread):
    path = tmp_path_factory.mktemp("golden") / "golden-tiny.safetensors"
    assert main(["init-model", str(path), "--arch", "tiny", "--quality", "2", "--seed", "0"]) == 0
    return path


def test_plain_encode_bytes(tmp_path, carphone_path, seeded_checkpoint):
    out = tmp_path / "plain.bits"
    assert main(["--threads", "1", "encode", str(carphone_path), "-o", str(out), "--model", str(seeded_checkpoint),
                 "--frames", FRAMES]) == 0
    assert sha256(out) == SSF_GOLDEN["encode"]


def test_decoder_lora_bits_and_payload(tmp_path, carphone_path, seeded_checkpoint):
    out = tmp_path / "lora"
    assert main(["--threads", "1", "adapt", str(carphone_path), "-o", str(out), "--method", "decoder-lora",
                 "--model", str(seeded_checkpoint), "--frames", FRAMES, "--set", "send_update=always",
                 "--set", "training.epochs=1", "--set", "training.crop=128", "--set", "training.batch=1",
                 "--set", "training.train_gop=2", "--set", "training.learning_rate=0.02",
                 "--set", "training.min_steps=0"]) == 0
    bits, payload = out / "carphone_pristine.bits", out / "carphone_pristine.payload"
    assert payload.exists(), "the update was meant to be sent (send_update=always) and to be non-zero"
    assert (sha256(bits), sha256(payload)) == (SSF_GOLDEN["decoder-lora.bits"], SSF_GOLDEN["decoder-lora.payload"])


def test_gop_adapters_bits(tmp_path, carphone_path, seeded_checkpoint):
    out = tmp_path / "adapters"
    assert main(["--threads", "1", "adapt", str(carphone_path), "-o", str(out), "--method", "gop-adapters",
                 "--model", str(seeded_checkpoint), "--frames", FRAMES, "--set", "send_update=always",
                 "--set", "steps=1"]) == 0
    assert not (out / "carphone_pristine.payload").exists()
    assert sha256(out / "carphone_pristine.bits") == SSF_GOLDEN["gop-adapters.bits"]


@pytest.mark.parametrize("codec", ["x264", "x265"])
def test_standard_codec_stream_bytes(codec, carphone):
    from workers.standard.encoder import encode_planes

    planes = crop_planes(carphone, 64, 48)[:3]
    data = encode_planes(planes, 64, 48, Fraction(30), codec, crf=32, intra_period=12, preset="medium")
    assert hashlib.sha256(data).hexdigest() == STANDARD_GOLDEN[codec]


FORMAT3_STREAM = Path(__file__).parent / "data" / "golden-format3-tiny.bits"
FORMAT3_STREAM_SHA256 = "2b88694a012ec04bd3b04214ce78ee50ff8bcb3488b69ae504344a2544fbd1a3"
FORMAT3_RECON_Y4M_SHA256 = "a995ff939703ddd6388e82ed92a02d1b2ae802622e40879826ecd73a40ffdd53"  # its encoder's --recon


def test_format3_stream_still_decodes_to_its_encoders_reconstruction(tmp_path, seeded_checkpoint):
    assert FORMAT3_STREAM.read_bytes()[4] == 3 and sha256(FORMAT3_STREAM) == FORMAT3_STREAM_SHA256
    out = tmp_path / "format3.y4m"
    assert main(["decode", str(FORMAT3_STREAM), "-o", str(out), "--model", str(seeded_checkpoint)]) == 0
    assert sha256(out) == FORMAT3_RECON_Y4M_SHA256
