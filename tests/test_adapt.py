"""Adaptation: the weight prior and payload coding, every method's round trip, decisions, resume, damage.

Runs on a tiny seeded model and the first frames of the real carphone sample (176x144), CPU only."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from adaptjobs.cli import main
from schemas.adapt import DecoderLoraConfig, WeightPrior
from workers.adapt.decoder_updates import LoraUpdate, decoder_deconvs
from workers.encode_job import decode_files
from workers.encoder import adapt_video
from workers.methods import parse_method_config
from workers.adapt.payload import WeightUpdate, decode_payload, encode_payload, make_header, read_payload_header
from workers.adapt.prior import bin_probability, coding_probabilities, ideal_bits, weight_bits
from workers.bitstream import unpack
from workers.checkpoints import save_checkpoint
from workers.errors import BitstreamError, InputError
from workers.video_codec import decode_sequence

LMBDA = 0.0067  # a mid-range MSE lambda (units of 1/255^2)
FAST_DECODER = {"training": {"epochs": 2, "crop": 128, "batch": 2, "train_gop": 2, "learning_rate": 0.02,
                             "checkpoint_every": 1}}


def config_for(method: str, **options):
    return parse_method_config(method, options)


# ------------------------------------------------------------------ prior
def test_bin_probabilities_form_a_distribution_and_favour_zero():
    prior = WeightPrior()
    probabilities = coding_probabilities(prior, 2000)
    assert abs(probabilities.sum() - 1.0) < 1e-12
    mass = bin_probability(prior, torch.arange(-4000, 4001, dtype=torch.float64) * prior.grid)
    assert abs(float(mass.sum()) - 1.0) < 1e-9  # untruncated bins cover the real line
    assert probabilities[2000] > 0.99 and probabilities[2000] == probabilities.max()
    assert probabilities[2001] == pytest.approx(probabilities[1999])  # symmetric


def test_weight_rate_carries_gradients_towards_zero():
    prior = WeightPrior()
    update = torch.tensor([0.0, 0.001, -0.0012, 0.012, -0.03, 0.2], requires_grad=True)
    bits = weight_bits(prior, update)
    bits.backward()
    indices = torch.round(update.detach() / prior.grid)
    exact = -torch.log2(bin_probability(prior, indices * prior.grid)).sum()
    assert bits.item() == pytest.approx(exact.item(), rel=1e-6)  # the value is the cost of the coded indices
    gradient = update.grad
    assert gradient[0] == 0  # zero is the minimum of the rate
    # descent shrinks |d|, also inside the zero bin where the coded cost is flat
    assert torch.all(torch.sign(gradient[1:]) == torch.sign(update.detach()[1:]))


# ------------------------------------------------------------------ payload
def sample_indices(prior: WeightPrior, count: int, seed: int) -> torch.Tensor:
    """Grid indices drawn from the spike-and-slab prior itself."""
    generator = torch.Generator().manual_seed(seed)
    slab = torch.rand(count, generator=generator) < 1.0 / (1.0 + prior.alpha) * 50  # more slab than the prior, still sparse
    values = torch.where(slab, torch.randn(count, generator=generator) * prior.slab_std,
                         torch.randn(count, generator=generator) * prior.spike)
    return torch.round(values / prior.grid).to(torch.int64)


def payload_for(indices: dict[str, torch.Tensor], sha: str = "a" * 64, prior: WeightPrior = WeightPrior()) -> WeightUpdate:
    header = make_header(sha, "full-decoder", {}, prior, indices)  # full-decoder: no structure to choose
    return WeightUpdate(header, indices)


def shapes_of(indices: dict[str, torch.Tensor]):
    return lambda header: {name: tuple(k.shape) for name, k in indices.items()}


def test_payload_round_trip_and_bits_within_one_percent_of_the_prior():
    prior = WeightPrior()
    indices = {"layer.lora_A_delta": sample_indices(prior, 120_000, 0).reshape(300, 400),
               "layer.lora_B": sample_indices(prior, 80_000, 1).reshape(200, 400)}
    data = encode_payload(payload_for(indices))
    decoded = decode_payload(data, "a" * 64, shapes_of(indices))
    assert all(torch.equal(decoded.indices[k], v) for k, v in indices.items())
    header = decoded.header
    flat = torch.cat([v.reshape(-1) for v in indices.values()])
    ideal = ideal_bits(prior, flat, header.bound)
    stream_bits = 8 * (len(data) - len(encode_payload(payload_for({k: torch.zeros(0, dtype=torch.int64)
                                                                   for k in indices})))) 
    assert ideal > 1000
    assert abs(stream_bits - ideal) / ideal < 0.01, (stream_bits, ideal)


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend", "magic", "other-model", "other-tensors"])
def test_damaged_or_foreign_payloads_are_refused(damage):
    indices = {"w": torch.tensor([[0, 3, -2, 0]])}
    data = bytearray(encode_payload(payload_for(indices)))
    sha = "a" * 64
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
    elif damage == "truncate":
        data = data[:-5]
    elif damage == "extend":
        data += b"\0"
    elif damage == "magic":
        data[:4] = b"XXXX"
    elif damage == "other-model":
        sha = "b" * 64
    else:  # the decoder rebuilds another tensor list than the encoder coded
        indices = {"w": torch.zeros(2, 2, dtype=torch.int64)}
    with pytest.raises(BitstreamError) as error:
        decode_payload(bytes(data), sha, shapes_of(indices), "x.payload")
    assert str(error.value).startswith("x.payload: ") and "\n" not in str(error.value)


# ------------------------------------------------------------------ LoRA
@pytest.mark.parametrize("variant", ["extended", "repeat"])
def test_lora_starts_at_the_base_model_and_shapes_follow_the_paper(tiny_model, variant):
    config = DecoderLoraConfig(variant=variant, ranks=(4, 2, 2, 1))
    update = LoraUpdate(tiny_model.model, config)
    zeros = {k: torch.zeros_like(v) for k, v in update.coded.items()}
    weights = update.weights(zeros)
    parameters = dict(tiny_model.model.named_parameters())
    assert all(torch.equal(w, parameters[name]) for name, w in weights.items())
    layers = decoder_deconvs(tiny_model.model)
    assert len(weights) == 2 * len(layers) == 24  # 4 transposed convs in each of the three decoders: weight, bias
    name, index, deconv = layers[0]
    c_in, c_out, k, _ = deconv.weight.shape
    rank = 4
    a, b = update.coded[f"{name}.lora_A_delta".replace(".", "__")], update.coded[f"{name}.lora_B".replace(".", "__")]
    if variant == "extended":
        assert a.shape == (rank * k, c_in * k) and b.shape == (c_out * k, rank * k)
    else:
        assert a.shape == (rank, c_in) and b.shape == (c_out, rank)
    # A's initialisation is regenerated from the seed, never sent
    again = LoraUpdate(tiny_model.model, config)
    assert all(torch.equal(update.a_init[n], again.a_init[n]) for n in update.a_init)


# ------------------------------------------------------------------ whole units
@pytest.fixture(scope="module")
def none_result(tmp_path_factory, carphone, tiny_model):
    out = tmp_path_factory.mktemp("none")
    return out, adapt_video(carphone, tiny_model, out, config_for("none"), intra_period=2)


def test_none_is_the_base_stream(none_result, carphone):
    out, result = none_result
    assert result.decision == "base-method" and result.payload_bytes == 0 and not (out / "carphone_pristine.payload").exists()
    assert result.bytes_written == (out / "carphone_pristine.bits").stat().st_size
    assert json.loads((out / "result.json").read_text())["bpp_with_payload"] == result.bpp


@pytest.mark.parametrize("method,options", [("decoder-lora", {"training": {"epochs": 0}}),
                                            ("full-decoder", {"training": {"epochs": 0}}),
                                            ("gop-adapters", {"steps": 0}),
                                            ("gop-adapters+decoder-lora", {"lora": {"training": {"epochs": 0}},
                                                                           "adapters": {"steps": 0}})])
def test_zero_step_adaptation_is_exactly_the_none_bitstream(tmp_path, none_result, carphone, tiny_model, method, options):
    out, _ = none_result
    result = adapt_video(carphone, tiny_model, tmp_path, config_for(method, send_update="always", **options), intra_period=2)
    assert result.payload_bytes == 0 and not (tmp_path / "carphone_pristine.payload").exists()
    if method.startswith("gop"):  # zero-initialised adapters: same encoder outputs, same bytes
        assert result.decision == "sent"
        header_a, frames_a = unpack((tmp_path / "carphone_pristine.bits").read_bytes())
        header_b, frames_b = unpack((out / "carphone_pristine.bits").read_bytes())
        assert [f.streams for f in frames_a] == [f.streams for f in frames_b]
        assert header_a.payload_sha256 is None
    else:
        assert result.decision == "zero-update"
        assert (tmp_path / "carphone_pristine.bits").read_bytes() == (out / "carphone_pristine.bits").read_bytes()


@pytest.mark.parametrize("method,options", [
    ("decoder-lora", dict(FAST_DECODER, ranks=[2, 2, 2, 1])),
    ("decoder-lora", dict(FAST_DECODER, variant="repeat")),
    ("decoder-lora", dict(FAST_DECODER, ranks=[0], training=dict(FAST_DECODER["training"], first_stage_step_cells=4.0))),
    # the deconv biases alone (issue 14); 2 steps at 0.25 cells leave every bias in the zero bin
    ("full-decoder", FAST_DECODER),
])
def test_decoder_update_round_trip_through_the_cli(tmp_path, carphone_path, tiny_checkpoint, method, options, capsys):
    out = tmp_path / "unit"
    sets = [f"--set=training={json.dumps(options['training'])}"] + [
        f"--set={k}={json.dumps(v)}" for k, v in options.items() if k != "training"]
    code = main(["adapt", str(carphone_path), "-o", str(out), "--method", method, "--model", str(tiny_checkpoint),
                 "--frames", "4", "--intra-period", "2", "--set", "send_update=always", *sets,
                 "--recon", str(tmp_path / "recon.y4m"), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    payload = out / "carphone_pristine.payload"
    assert result["decision"] == "sent" and payload.stat().st_size == result["payload_bytes"] > 0
    assert result["bpp_with_payload"] == pytest.approx(
        8 * (result["bytes_written"] + result["payload_bytes"]) / (176 * 144 * 4))
    header, _ = unpack((out / "carphone_pristine.bits").read_bytes())
    assert header.payload_sha256 == hashlib.sha256(payload.read_bytes()).hexdigest()
    # only what the decoder cannot rebuild: no training options, no tensor names or shapes
    payload_header = read_payload_header(payload.read_bytes())
    assert set(payload_header.structure) == set(config_for(method).STRUCTURE_FIELDS)
    assert len(payload_header.model_dump_json()) < 320 and b"lora_B" not in payload.read_bytes()
    assert main(["decode", str(out / "carphone_pristine.bits"), "-o", str(tmp_path / "decoded.y4m"),
                 "--model", str(tiny_checkpoint)]) == 0  # finds <name>.payload beside the stream
    assert (tmp_path / "decoded.y4m").read_bytes() == (tmp_path / "recon.y4m").read_bytes()
    assert main(["decode", str(out), "-o", str(tmp_path / "from-folder.y4m"), "--model", str(tiny_checkpoint)]) == 0
    assert (tmp_path / "from-folder.y4m").read_bytes() == (tmp_path / "recon.y4m").read_bytes()  # the unit folder
    # 4 frames -> clips of 2 frames starting at 0 and 2 -> one batch of 2 per epoch, 2 epochs
    assert json.loads((out / "result.json").read_text())["adaptation_steps"] == 2


def test_decoding_needs_the_right_payload(tmp_path, carphone, tiny_model, other_tiny_model, tiny_checkpoint, capsys):
    first = adapt_video(carphone, tiny_model, tmp_path / "a", config_for("decoder-lora", send_update="always", **FAST_DECODER),
                        intra_period=2)
    second = adapt_video(carphone, tiny_model, tmp_path / "b",
                         config_for("decoder-lora", send_update="always", seed=1, **FAST_DECODER), intra_period=2)
    bits = tmp_path / "a" / "carphone_pristine.bits"
    with pytest.raises(BitstreamError, match="needs its weight payload"):
        decode_files(bits, None, tiny_model)
    with pytest.raises(BitstreamError, match="is not the payload of"):
        decode_files(bits, tmp_path / "b" / "carphone_pristine.payload", tiny_model)
    # a payload made for another base model
    foreign = tmp_path / "other.safetensors"
    save_checkpoint(foreign, other_tiny_model.model, other_tiny_model.metadata)
    with pytest.raises(BitstreamError, match="encoded with model|payload was made for"):
        decode_files(bits, tmp_path / "a" / "carphone_pristine.payload", other_tiny_model)
    payload = tmp_path / "a" / "carphone_pristine.payload"
    header_bytes = bytearray(payload.read_bytes())
    header_bytes[-2] ^= 1
    payload.write_bytes(bytes(header_bytes))
    code = main(["decode", str(bits), "-o", str(tmp_path / "x.y4m"), "--model", str(tiny_checkpoint)])
    error = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in error and "carphone_pristine" in error
    assert not (tmp_path / "x.y4m").exists()
    assert first.update_sent and second.update_sent


def test_gop_adapter_streams_decode_with_the_stock_decoder(tmp_path, carphone, tiny_model):
    config = config_for("gop-adapters", send_update="always", steps=2, intra_steps=3)
    result = adapt_video(carphone, tiny_model, tmp_path, config, intra_period=2, recon=tmp_path / "r.y4m")
    # GoPs x (passes x tiles (176x144: one) + I-frame steps)
    assert result.decision == "sent" and result.adaptation_steps == 2 * (2 * 1 + 3)
    data = (tmp_path / "carphone_pristine.bits").read_bytes()
    header, frames = decode_sequence(data, lambda h: (tiny_model.model, tiny_model.model.entropy_tables()))
    assert header.method == "gop-adapters" and header.payload_sha256 is None
    from workers.video_io import read_video
    decoded = read_video(tmp_path / "r.y4m")
    assert len(frames) == len(decoded) == 4


@pytest.mark.parametrize("method", ["decoder-lora", "gop-adapters"])
def test_resumed_equals_uninterrupted(tmp_path, carphone, tiny_model, monkeypatch, method):
    # 4 frames: 2 clips of 2 frames, one per step: 6 steps; adapters: per GoP (2) one I-frame step, then 2 passes
    # x 1 tile (176x144)
    options = {"training": dict(FAST_DECODER["training"], batch=1, epochs=3)} if method == "decoder-lora" \
        else {"steps": 2, "intra_steps": 1}
    config = config_for(method, send_update="always", **options)
    reference = adapt_video(carphone, tiny_model, tmp_path / "reference", config, intra_period=2)

    # past the first checkpoint (adapters: in the second GoP's P-frames, after its I-frame's checkpoint)
    crash_after = 3 if method == "decoder-lora" else 4
    calls = {"n": 0}
    original = torch.optim.Adam.step

    def crashing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > crash_after:
            raise KeyboardInterrupt("simulated crash")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        adapt_video(carphone, tiny_model, tmp_path / "resumed", config, intra_period=2)
    monkeypatch.setattr(torch.optim.Adam, "step", original)
    assert not (tmp_path / "resumed" / "result.json").exists()
    resumed = adapt_video(carphone, tiny_model, tmp_path / "resumed", config, intra_period=2)
    assert resumed.resumed_from_step > 0
    for suffix in (".bits", ".payload"):
        a, b = tmp_path / "reference" / f"carphone_pristine{suffix}", tmp_path / "resumed" / f"carphone_pristine{suffix}"
        assert a.exists() == b.exists()
        if a.exists():
            assert a.read_bytes() == b.read_bytes()
    assert resumed.adaptation_steps == reference.adaptation_steps


def test_patch_gops_tile_the_coded_frame_on_the_hyper_latent_grid():
    """Issue 14: tiles start on multiples of the patch (128 px = one z cell) and end at the frame's edge, so
    each tile's z cells are the coder's; they cover the padded frame exactly once."""
    from workers.adapt.training import patch_windows

    assert patch_windows(144, 176, 144, 176, 128) == [(0, 0, 144, 176)]  # remainders under 64 px join
    assert patch_windows(96, 100, 96, 112, 256) == [(0, 0, 96, 112)]
    assert patch_windows(288, 352, 288, 352, 128) == [(0, 0, 128, 128), (0, 128, 128, 128), (0, 256, 128, 96),
                                                      (128, 0, 160, 128), (128, 128, 160, 128), (128, 256, 160, 96)]
    for height, width, patch in ((576, 720, 128), (1088, 1920, 256), (288, 352, 256)):
        windows = patch_windows(height, width, height, width, patch)
        covered = torch.zeros(height, width, dtype=torch.int64)
        for top, left, h, w in windows:
            assert top % patch == 0 and left % patch == 0 and h >= patch // 2 and w >= patch // 2
            covered[top: top + h, left: left + w] += 1
        assert bool((covered == 1).all())


def test_a_checkpoint_of_another_config_is_refused(tmp_path, carphone, tiny_model):
    adapt_video(carphone, tiny_model, tmp_path, config_for("decoder-lora", **FAST_DECODER), intra_period=2)
    other = config_for("decoder-lora", seed=5, **FAST_DECODER)
    with pytest.raises(InputError, match="another adaptation config"):
        adapt_video(carphone, tiny_model, tmp_path, other, intra_period=2)


def test_bad_method_options_are_one_line_errors(tmp_path, carphone_path, tiny_checkpoint, capsys):
    code = main(["adapt", str(carphone_path), "-o", str(tmp_path), "--method", "decoder-lora",
                 "--model", str(tiny_checkpoint), "--set", "training.crop=100"])
    error = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in error and "crop" in error
    assert not any(tmp_path.iterdir())


def test_both_methods_never_cost_more_than_the_lora_or_the_adapters_alone(tmp_path, carphone, tiny_model):
    """gop-adapters+decoder-lora trains the same LoRA as decoder-lora, then adapters on top; the encoder may
    drop the adapters, or the LoRA (adapters trained on the base model, as gop-adapters does), so its RD cost
    is at most either alone (up to the longer method name in the header)."""
    # send_update=always: the LoRA keeps its best TRAINED state (under if-better the tiny model's best is the base
    # model itself, and there would be no LoRA to compare with)
    lora_options = dict(FAST_DECODER, ranks=[2, 2, 2, 1], send_update="always")
    alone = adapt_video(carphone, tiny_model, tmp_path / "lora", config_for("decoder-lora", **lora_options), intra_period=2)
    adapters = adapt_video(carphone, tiny_model, tmp_path / "adapters",
                           config_for("gop-adapters", steps=1, send_update="always"), intra_period=2)
    both = adapt_video(carphone, tiny_model, tmp_path / "both",
                       config_for("gop-adapters+decoder-lora", lora=lora_options, adapters={"steps": 1}), intra_period=2)
    pixels = carphone.width * carphone.height * len(carphone)
    header_slack = 8 * len("+decoder-lora" + "gop-adapters+") / pixels
    assert both.rd_cost <= min(both.rd_cost_base, alone.rd_cost_adapted + header_slack,
                               adapters.rd_cost_adapted + header_slack) + 1e-12
    assert both.decision in ("sent", "sent-lora-only", "sent-adapters-only", "base-cheaper")
    if both.decision == "sent-adapters-only":
        assert both.update_sent and both.payload_bytes == 0
    if both.decision == "sent-lora-only":  # the LoRA-only stream: decodes with the payload, and nothing else differs
        assert both.update_sent and both.payload_bytes == alone.payload_bytes
        assert abs(both.psnr_rgb - alone.psnr_rgb_adapted) < 1e-9


# ------------------------------------------------------------------ decoder-update training: lr, schedule, best state
def _padded_frames(video):
    from workers.codec.ssf import pad_frame
    from workers.video_io import SourceFrames
    return SourceFrames(video, lambda frame: pad_frame(frame.unsqueeze(0))[0])


def test_learning_rate_is_tied_to_the_grid_and_the_schedule_ends_below_its_peak():
    from schemas.adapt import DecoderTraining
    from workers.adapt.training import learning_rate_at, peak_learning_rate

    training, prior = DecoderTraining(), WeightPrior(grid=0.002)
    peak = peak_learning_rate(training, prior)
    assert peak == pytest.approx(training.step_cells * prior.grid) and peak <= prior.grid
    assert peak_learning_rate(DecoderTraining(learning_rate=0.02), prior) == 0.02  # an explicit lr wins
    rates = [learning_rate_at(training, peak, step, 100) for step in range(100)]
    top = rates.index(max(rates))
    assert max(rates) == pytest.approx(peak) and 0 < top < 20  # warm-up, then the peak
    assert all(a <= b for a, b in zip(rates[:top], rates[1:top + 1]))  # rises during the warm-up
    assert all(a >= b for a, b in zip(rates[top:], rates[top + 1:]))  # then never rises again
    assert rates[-1] == pytest.approx(training.final_lr_fraction * peak) and rates[-1] < rates[0]
    from workers.adapt.training import epochs_to_run
    assert epochs_to_run(DecoderTraining(epochs=8, min_steps=96), 2) == 48  # a 10-frame clip: 2 steps per epoch
    assert epochs_to_run(DecoderTraining(epochs=8, min_steps=96), 15) == 8
    assert epochs_to_run(DecoderTraining(epochs=0, min_steps=96), 2) == 0  # no training stays no training


def _train_tiny(tiny_model, carphone, tmp_path, training: dict, include_base: bool, prior=WeightPrior(grid=0.002)):
    from schemas.adapt import DecoderTraining
    from workers.adapt.decoder_updates import make_update
    from workers.adapt.training import sequence_rd_cost, train_decoder_update

    config = config_for("decoder-lora", ranks=[2, 2, 2, 1])
    frames, model = _padded_frames(carphone), tiny_model.model
    update, evaluations, moves = make_update(model, config), [], []
    training = DecoderTraining(**training)
    pixels = carphone.width * carphone.height * len(carphone)
    original = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):  # the largest move of any coded weight in one step, in grid cells
        before = [p.detach().clone() for p in update.coded.values()]
        result = original(self, *args, **kwargs)
        moves.append(max(float((p.detach() - b).abs().max()) for p, b in zip(update.coded.values(), before)) / prior.grid)
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.Adam, "step", recording_step)
        train_decoder_update(model, update, prior, training, frames, pixels, LMBDA, 0,
                             tmp_path / "state.safetensors", "{}", on_log=lambda r: r.get("eval") and evaluations.append(r),
                             eval_gop=2, include_base=include_base)
    final = sequence_rd_cost(model, update, prior, frames, LMBDA, 2, training.eval_crop, pixels,
                             lambda u: int(sum(float(weight_bits(prior, v.detach())) for v in u.coded.values())))
    return update, evaluations, final, moves


def test_default_steps_stay_within_one_grid_cell(tmp_path, carphone, tiny_model):
    # Adam's epsilon at 1e-8: steps of ~lr whatever the gradient's scale, the worst case for jumping cells
    _, _, _, moves = _train_tiny(tiny_model, carphone, tmp_path, {"epochs": 2, "crop": 128, "train_gop": 2, "batch": 1,
                                                                  "adam_eps": 1e-8}, include_base=True)
    # moves, but never several cells a step (Adam's bias-corrected step can exceed lr by a little: measured 1.0008)
    assert len(moves) == 4 and 0.5 <= max(moves) <= 1.05


@pytest.mark.parametrize("include_base", [True, False])
def test_training_ends_at_its_best_evaluated_state_never_worse_than_the_base(tmp_path, carphone, tiny_model, include_base):
    # a learning rate of 25 grid cells per step: the straight-through steps overshoot, later states get worse
    update, evaluations, final, _ = _train_tiny(
        tiny_model, carphone, tmp_path, {"epochs": 3, "crop": 128, "train_gop": 2, "batch": 1, "learning_rate": 0.05,
                                         "warmup_fraction": 0.0}, include_base=include_base)
    base, trained = evaluations[0], evaluations[1:]
    assert base["step"] == 0 and [e["step"] for e in trained] == [2, 4, 6]  # the base, then every epoch
    candidates = evaluations if include_base else trained
    best = min(candidates, key=lambda e: e["cost"])
    assert final["cost"] == pytest.approx(best["cost"], rel=1e-6)
    if include_base:
        assert final["cost"] <= base["cost"]
        if best is base:
            assert all(int(p.detach().abs().max()) == 0 for p in update.coded.values())  # the empty update
    assert len({round(e["cost"], 9) for e in trained}) > 1, "the states differ, so keeping the best is tested"
