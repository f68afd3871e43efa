"""CompressAI interop, with the fixture taken from the other side.

tests/fixtures/compressai/ssf2020-{mse,ms-ssim}-layout.json hold the key names, shapes and dtypes of real
``compressai.zoo.ssf2020`` state dicts (compressai 1.2.8), in the current and the old entropy-bottleneck
key generation, written by scripts/make_compressai_fixture.py against the real package. Here random
tensors are laid out exactly so, torch.save'd under a zoo-style name, and imported by our loader: a layout
our model does not match (CompressAI's (3, 3, 3, 3) bottleneck filters, a renamed key) fails here.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from schemas.bitstream import BitstreamHeader
from workers.checkpoints import import_compressai, read_compressai
from workers.decoder import decode_ssf
from workers.errors import ModelError
from workers.model_store import resolve_model
from workers.video_codec import encode_sequence

FIXTURES = Path(__file__).parent / "fixtures" / "compressai"
DERIVED = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table", "scale_bound", "target", ".bound")


def fixture(metric: str) -> dict:
    return json.loads((FIXTURES / f"ssf2020-{metric}-layout.json").read_text())


def random_state_dict(rows: list, seed: int) -> dict[str, torch.Tensor]:
    """Tensors of the fixture's names, shapes and dtypes: small normal floats (a network whose activations
    stay finite), zeros for the integer CDF buffers."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape, dtype in rows:
        if dtype.startswith("int"):
            state[name] = torch.zeros(shape, dtype=getattr(torch, dtype))
        else:
            state[name] = (0.05 * torch.randn(shape, generator=generator)).to(getattr(torch, dtype))
    return state


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """path of a torch.save'd random state dict per (metric, generation), written once (139 MB each)."""
    folder, paths = tmp_path_factory.mktemp("compressai"), {}

    def path_for(metric: str, generation: str) -> Path:
        if (metric, generation) not in paths:
            path = folder / generation / f"ssf2020-{metric}-3-0123abcd.pth.tar"
            path.parent.mkdir(exist_ok=True)
            torch.save(random_state_dict(fixture(metric)["generations"][generation], seed=3), path)
            paths[(metric, generation)] = path
        return paths[(metric, generation)]

    return path_for


def test_fixture_is_the_real_library_layout():
    """What the tests below rely on: the fixture says what the issue measured on a real checkpoint."""
    data = fixture("mse")
    current, old = data["generations"]["current"], data["generations"]["old"]
    assert data["compressai_version"] == "1.2.8" and len(current) == len(old) == 183
    names = [row[0] for row in current]
    assert "img_hyperprior.entropy_bottleneck.matrices.4" in names and "img_hyperprior.entropy_bottleneck.factors.3" in names
    assert "img_hyperprior.entropy_bottleneck._matrix4" in [row[0] for row in old]
    assert [row[1:] for row in current] == [row[1:] for row in old]
    assert fixture("ms-ssim")["generations"] == data["generations"]


@pytest.mark.parametrize("metric", ["mse", "ms-ssim"])
@pytest.mark.parametrize("generation", ["current", "old"])
def test_real_layout_imports_every_tensor(saved, metric, generation):
    path = saved(metric, generation)
    loaded = resolve_model(str(path))
    assert loaded.metadata.quality == 3
    assert loaded.metadata.provenance.source == "compressai-import"
    assert loaded.model.architecture.bottleneck_filters == (3, 3, 3, 3)
    assert (loaded.model.architecture.mid_channels, loaded.model.architecture.latent_channels,
            loaded.model.architecture.hyper_channels) == (128, 192, 192)
    # every non-derived tensor of the real layout is one of ours, under the current name, unchanged
    expected = random_state_dict(fixture(metric)["generations"]["current"], seed=3)
    expected = {name: tensor for name, tensor in expected.items() if not name.endswith(DERIVED)}
    ours = loaded.model.state_dict()
    assert set(ours) == set(expected)
    assert all(torch.equal(ours[name], expected[name]) for name in expected)


def _frames(carphone, count: int = 3) -> list[torch.Tensor]:
    """The first frames of carphone, cropped to 80x48 (not a multiple of 16 or 128: both paddings pad)."""
    return [carphone.frame_rgb(i)[:, :48, :80].contiguous() for i in range(count)]


@pytest.mark.parametrize("generation", ["current", "old"])
@pytest.mark.parametrize("padding", [None, "compressai"])
def test_imported_model_decode_equals_recon(saved, carphone, generation, padding):
    path = saved("mse", generation)
    loaded = import_compressai(path)
    frames = _frames(carphone)
    header = BitstreamHeader(model_id=loaded.metadata.model_id, weights_sha256=loaded.metadata.weights_sha256,
                             quality=3, width=80, height=48, frame_count=len(frames), fps_num=30, fps_den=1,
                             intra_period=0, padding=padding)
    encoded = encode_sequence(loaded.model, loaded.model.entropy_tables(), frames, header)
    decoded_header, decoded = decode_ssf(encoded.data, loaded, None, "imported.bits")
    assert decoded_header.padding == padding
    assert len(decoded) == len(frames)
    assert all(torch.equal(a, b) for a, b in zip(decoded, encoded.reconstruction))


def test_imported_bottleneck_trains_and_rebuilds_its_tables(saved):
    """The quantiles/CDF update path on CompressAI's 4-factor bottleneck: the auxiliary loss reaches every
    parameter it should, a step moves the quantiles, and the coding tables rebuild from them."""
    model = import_compressai(saved("mse", "current")).model
    bottleneck = model.img_hyperprior.entropy_bottleneck
    before = bottleneck.quantiles.detach().clone()
    optimizer = torch.optim.SGD([h.entropy_bottleneck.quantiles for h in
                                 (model.img_hyperprior, model.motion_hyperprior, model.res_hyperprior)], lr=0.1)
    loss = model.aux_loss()
    loss.backward()
    assert torch.isfinite(loss) and bottleneck.quantiles.grad.abs().sum() > 0
    assert bottleneck.matrices[4].grad is None  # the aux loss moves only the quantiles
    optimizer.step()
    assert not torch.equal(before, bottleneck.quantiles.detach())
    tables = model.entropy_tables()
    assert tables.intra.probabilities.shape[0] == 192 and (tables.intra.lengths >= 2).all()


def test_info_summary_of_a_compressai_checkpoint(saved):
    summary = read_compressai(saved("ms-ssim", "old")).summary()
    assert summary["quality"] == 3 and summary["metric"] == "ms-ssim" and summary["key_generation"] == "old"
    assert summary["bottleneck_filters"] == [3, 3, 3, 3]
    assert summary["parameters"] == fixture("ms-ssim")["parameters"]


def test_mixed_key_generations_are_refused(tmp_path):
    rows = fixture("mse")["generations"]
    state = random_state_dict(rows["current"], seed=1)
    state["img_hyperprior.entropy_bottleneck._matrix0"] = state.pop("img_hyperprior.entropy_bottleneck.matrices.0")
    path = tmp_path / "ssf2020-mse-2-mixed.pth.tar"
    torch.save(state, path)
    with pytest.raises(ModelError, match="mixes old"):
        import_compressai(path)


@pytest.mark.parametrize("name, quality, metric", [("ssf2020-mse-3-9c8b998d.pth.tar", 3, "mse"),
                                                   ("ssf2020-ms-ssim-7-0123abcd.pth.tar", 7, "ms-ssim"),
                                                   ("ssf2020-mse-12.pth", 12, "mse")])
def test_quality_and_metric_from_zoo_names(name, quality, metric):
    from workers.checkpoints import _quality_and_metric

    assert _quality_and_metric(Path(name), None) == (quality, metric)


def test_name_without_quality_needs_quality():
    from workers.checkpoints import _quality_and_metric

    with pytest.raises(ModelError, match="pass --quality"):
        _quality_and_metric(Path("my-ssf.pth.tar"), None)
    assert _quality_and_metric(Path("my-ssf.pth.tar"), 4) == (4, None)


def test_cli_info_prints_what_it_would_import(saved, capsys):
    from adaptjobs.cli import main

    assert main(["info", str(saved("mse", "current"))]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["quality"] == 3 and shown["metric"] == "mse" and shown["key_generation"] == "current"
    assert shown["bottleneck_filters"] == [3, 3, 3, 3] and shown["parameters"] == fixture("mse")["parameters"]
    assert shown["architecture"]["mid_channels"] == 128 and shown["derived_buffers_ignored"] > 0
