"""Issue 14: decoder-lora's deconv biases and rank-0 layers (payload format 5).

- the update's tensor list: LoRA only where the rank is > 0, one bias per deconv with ``biases``;
- the payload leaves out an all-zero group and the decoder rebuilds exactly the trained weights;
- the first training stage moves the biases alone;
- a bias-only unit through the CLI decodes to the encoder's reconstruction (tests/test_adapt.py) and its
  kept state never costs more than the base (below).
"""

from __future__ import annotations

import json

import pytest
import torch

from workers.adapt.decoder_updates import apply_update, decoder_deconvs, make_update, payload_name
from workers.adapt.payload import WeightUpdate, encode_payload, make_header, read_payload_header
from workers.methods import parse_method_config
from workers.methods._decoder_update import payload_for, rebuild_decoder


def _fill(update, which: str, value: float) -> None:
    """Set every coded tensor whose key ends with ``which`` to a ramp of grid multiples up to ``value``."""
    with torch.no_grad():
        for key, tensor in update.coded.items():
            if key.endswith(which):
                tensor.copy_(torch.linspace(-value, value, tensor.numel()).reshape(tensor.shape))


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_rank_zero_layers_have_no_lora_and_biases_add_one_tensor_per_deconv(tiny_model):
    deconvs = decoder_deconvs(tiny_model.model)
    update = make_update(tiny_model.model, parse_method_config("decoder-lora", {"ranks": [2, 0]}))
    lora = {payload_name(k).rsplit(".", 1)[0] for k in update.coded if "lora" in k}
    assert lora == {name for name, index, _ in deconvs if index == 0}  # rank 0 repeats for the later deconvs
    biases = [k for k in update.coded if k.endswith("bias_delta")]
    assert len(biases) == len(deconvs) and set(update.first_stage) == set(biases)
    assert all(update.coded[k].shape == m.bias.shape for k, (_, _, m) in zip(biases, deconvs))
    old = make_update(tiny_model.model, parse_method_config("decoder-lora", {"biases": False}))
    assert not any(k.endswith("bias_delta") for k in old.coded) and old.first_stage == ()


@pytest.mark.parametrize("zero, expected", [("lora_B", {"ranks": [0], "biases": True}),
                                            ("bias_delta", {"ranks": [2, 1], "biases": False}),
                                            (None, {"ranks": [2, 1], "biases": True})])
def test_an_all_zero_group_is_left_out_and_the_decoder_rebuilds_the_trained_weights(tiny_model, zero, expected):
    config = parse_method_config("decoder-lora", {"ranks": [2, 1]})
    update = make_update(tiny_model.model, config)
    grid = config.prior.grid
    for which in ("lora_A_delta", "lora_B", "bias_delta"):
        _fill(update, which, 0.0 if which == zero else 3 * grid)
    data = payload_for(tiny_model, config, update)
    header = read_payload_header(data)
    assert {k: header.structure[k] for k in expected} == expected
    trained = apply_update(tiny_model.model, update, {k: torch.round(v / grid) * grid for k, v in update.coded.items()})
    assert _same_weights(rebuild_decoder(tiny_model, data, "u.payload"), trained)
    if zero is not None:  # the left-out group costs nothing: fewer bytes than the same indices sent whole
        indices = {payload_name(k): torch.round(v.detach() / grid).to(torch.int64) for k, v in update.coded.items()}
        structure = config.model_dump(mode="json", include=set(config.STRUCTURE_FIELDS))
        whole = encode_payload(WeightUpdate(make_header(tiny_model.metadata.weights_sha256, "decoder-lora", structure,
                                                        config.prior, indices, fit_prior=True), indices))
        assert len(data) < len(whole)


def test_the_first_stage_trains_the_biases_alone(tmp_path, carphone, tiny_model):
    from workers.adapt.training import train_decoder_update
    from workers.codec.ssf import pad_frame
    from workers.video_io import SourceFrames

    config = parse_method_config("decoder-lora", {"ranks": [2, 1], "training": {
        "epochs": 1, "crop": 128, "batch": 2, "train_gop": 2, "learning_rate": 0.02, "first_stage_fraction": 1.0,
        "first_stage_step_cells": 4.0, "evaluate": "estimate"}})
    frames = SourceFrames(carphone, lambda frame: pad_frame(frame.unsqueeze(0))[0])
    update = make_update(tiny_model.model, config)
    records = []
    train_decoder_update(tiny_model.model, update, config.prior, config.training, frames, 176 * 144 * 4,
                         tiny_model.metadata.lmbda or 0.01, 0, tmp_path / "state.safetensors", "{}",
                         on_log=records.append, eval_gop=2, include_base=False)
    assert [r["step"] for r in records if r.get("eval")] == [0, 1]  # the base, then the (only) trained state
    moved = {k: bool(v.abs().max() > 0) for k, v in update.coded.items()}
    assert any(moved[k] for k in update.first_stage)
    assert not any(moved[k] for k in moved if k not in update.first_stage)


def test_a_bias_only_unit_keeps_a_state_no_costlier_than_the_base(tmp_path, carphone_path, tiny_model):
    from workers.encoder import adapt_video
    from workers.video_io import read_video

    carphone = read_video(carphone_path, max_frames=2)  # one GoP: a unit in ~half the time of the 4-frame fixture
    config = parse_method_config("decoder-lora", {"ranks": [0], "training": {
        "epochs": 1, "min_steps": 0, "crop": 128, "batch": 2, "train_gop": 2, "first_stage_step_cells": 4.0}})
    result = adapt_video(carphone, tiny_model, tmp_path, config, intra_period=2)
    records = [json.loads(line) for line in (tmp_path / "adapt.log").read_text().splitlines()]
    evaluations = [r for r in records if r.get("eval")]
    assert evaluations[0]["cost"] == pytest.approx(result.rd_cost_base, rel=1e-12)  # the base, coded
    assert result.rd_cost <= result.rd_cost_base
    if result.update_sent:
        assert read_payload_header((tmp_path / "carphone_pristine.payload").read_bytes()).structure["ranks"] == [0]


def test_a_first_stage_that_never_beats_the_base_is_dropped_and_the_rest_trains_from_zero(tmp_path, carphone,
                                                                                          tiny_model):
    """A stand-in coded cost that every non-zero state loses to: after the first stage the biases are back at
    zero and stay there while the LoRA trains (what the checkpoint holds after the last step)."""
    from safetensors.torch import load_file

    from workers.adapt.training import train_decoder_update
    from workers.codec.ssf import pad_frame
    from workers.video_io import SourceFrames

    config = parse_method_config("decoder-lora", {"ranks": [2, 1], "training": {
        "epochs": 2, "crop": 128, "batch": 2, "train_gop": 2, "learning_rate": 0.02, "first_stage_fraction": 0.5,
        "first_stage_step_cells": 4.0}})
    frames = SourceFrames(carphone, lambda frame: pad_frame(frame.unsqueeze(0))[0])
    update = make_update(tiny_model.model, config)
    records = []
    costlier = lambda u: {"cost": 1.0 + float(sum(v.detach().abs().sum() for v in u.coded.values()))}  # noqa: E731
    train_decoder_update(tiny_model.model, update, config.prior, config.training, frames, 176 * 144 * 4, 0.01, 0,
                         tmp_path / "state.safetensors", "{}", on_log=records.append, eval_gop=2, coded_cost=costlier)
    assert [r["step"] for r in records if r.get("first_stage_dropped")] == [1]
    last = load_file(tmp_path / "state.safetensors")
    assert all(not last[f"coded.{k}"].any() for k in update.first_stage)
    assert any(last[f"coded.{k}"].any() for k in update.coded if k not in update.first_stage)
    assert all(not v.any() for v in update.coded.values())  # the base stays the kept state


def test_an_extra_first_stage_runs_before_the_full_epochs_with_a_schedule_of_their_own(tmp_path, carphone,
                                                                                      tiny_model):
    """``first_stage_extra``: 2 epochs and a half-share first stage train 1 + 2 epochs; the biases alone in the
    first, and the learning rate of the LoRA's epochs warms up again from the start of theirs."""
    from workers.adapt.training import stage_epochs, train_decoder_update
    from workers.codec.ssf import pad_frame
    from workers.video_io import SourceFrames

    training = {"epochs": 2, "crop": 128, "batch": 2, "train_gop": 2, "learning_rate": 0.02,
                "first_stage_fraction": 0.5, "first_stage_step_cells": 4.0, "evaluate": "estimate",
                "warmup_fraction": 0.5}
    config = parse_method_config("decoder-lora", {"ranks": [2, 1], "training": {**training, "first_stage_extra": True}})
    assert stage_epochs(config.training, 1, True) == (3, 1)
    assert stage_epochs(config.training.model_copy(update={"first_stage_extra": False}), 1, True) == (2, 1)
    assert stage_epochs(config.training, 1, False) == (2, 0)
    frames = SourceFrames(carphone, lambda frame: pad_frame(frame.unsqueeze(0))[0])  # 4 frames: 1 step per epoch
    update = make_update(tiny_model.model, config)
    records = []
    train_decoder_update(tiny_model.model, update, config.prior, config.training, frames, 176 * 144 * 4, 0.01, 0,
                         tmp_path / "state.safetensors", "{}", on_log=records.append, eval_gop=2, include_base=False)
    steps = [r for r in records if "lr" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    first_lr, later_lrs = steps[0]["lr"], [r["lr"] for r in steps[1:]]
    assert later_lrs[0] < later_lrs[1] == pytest.approx(0.02)  # a fresh warm-up, then the peak
    assert first_lr == pytest.approx(0.02 / 2)  # the first stage's own one-step warm-up
    first_state = [r for r in records if r.get("eval") and r["step"] == 1]
    assert first_state, "the first stage's state is evaluated as a candidate"
