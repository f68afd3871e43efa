"""The device path (issue 15), on CPU-only CI: --device parsing and its errors, the CUDA determinism flags,
the parse path staying on the CPU when the transforms sit elsewhere (on `meta`, where they compute nothing),
device-independent checkpoints, and the header's optional device kind."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

from adaptjobs.cli import main
from adaptjobs.runner import task_device
from schemas.bitstream import BitstreamHeader
from schemas.codec import ARCHITECTURE_PRESETS
from workers.bitstream import header_json, pack, unpack
from workers.codec.hyperprior import Hyperprior
from workers.codec.ssf import padded_size
from workers.codecs.ssf import SSFCodec
from workers.device import (configure_determinism, expected_match, module_device, on_cpu, resolve_device,
                            to_cpu_state_dict, to_device, use_device)
from workers.errors import BitstreamError, InputError
from workers.video_codec import encode_sequence

HEAVY = ("img_encoder", "img_decoder", "res_encoder", "res_decoder", "motion_encoder", "motion_decoder")


@pytest.fixture
def no_cuda(monkeypatch):
    """CUDA absent, whatever this machine has (the CI case)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# ---------------------------------------------------------------- resolving --device
def test_cpu_and_auto_outside_ray_resolve_to_the_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")          # not in a Ray task: no assigned GPU
    assert resolve_device("auto", gpu_ids=[]) == torch.device("cpu")


def test_cuda_asked_for_and_absent_is_one_line(no_cuda):
    for spec in ("cuda", "cuda:1", "auto"):
        gpu_ids = [0] if spec == "auto" else None
        with pytest.raises(InputError) as caught:
            resolve_device(spec, gpu_ids)
        message = str(caught.value)
        assert f"--device {spec}" in message and "\n" not in message and "--device cpu" in message


def test_bad_device_spellings_are_refused():
    for spec in ("gpu", "cuda:", "cuda:x", "CPU", "", "mps:0"):
        with pytest.raises(InputError, match="--device must be"):
            resolve_device(spec)


def test_ray_auto_means_the_assigned_gpu():
    assert task_device("auto", [3]) == "cuda"  # Ray's CUDA_VISIBLE_DEVICES makes the assigned GPU cuda:0
    assert task_device("auto", []) == "cpu"
    assert task_device("cpu", [0]) == "cpu" and task_device("cuda:0", []) == "cuda:0"


def test_cli_cuda_absent_exits_1_with_one_line(tmp_path, capsys, no_cuda, carphone_path, tiny_checkpoint):
    out = tmp_path / "out.bits"
    code = main(["encode", str(carphone_path), "-o", str(out), "--model", str(tiny_checkpoint), "--frames", "2",
                 "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "--device cuda" in err
    assert not out.exists()  # refused before any work


def test_cli_bad_device_is_a_usage_error(tmp_path, carphone_path):
    with pytest.raises(SystemExit) as caught:
        main(["encode", str(carphone_path), "-o", str(tmp_path / "x.bits"), "--device", "tpu"])
    assert caught.value.code == 2


def test_submit_cuda_without_gpus_per_task_is_refused(tmp_path, capsys, carphone_path):
    code = main(["submit", str(carphone_path.parent), "--run", str(tmp_path / "run"), "--device", "cuda",
                 "--no-progress"])
    assert code == 1 and "--gpus-per-task" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- determinism flags
def test_determinism_flags_on_cuda_only(monkeypatch):
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        configure_determinism(torch.device("cpu"))  # CPU: nothing changes (CPU bytes stay what they were)
        assert not torch.are_deterministic_algorithms_enabled() or saved[4]
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        configure_determinism(torch.device("cuda", 0))  # the flags need no GPU to be set
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        import os
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.deterministic) = saved[:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])


# ---------------------------------------------------------------- the parse path stays on the CPU
def _meta_transforms(model):
    """A copy of ``model`` whose heavy transforms (autoencoders, hyper-encoders) sit on `meta`, where they
    compute no values at all; the rest stays on the CPU as a CPU decoder holds it."""
    placed = copy.deepcopy(model)
    for name in HEAVY:
        getattr(placed, name).to("meta")
    for hyperprior in (placed.img_hyperprior, placed.motion_hyperprior, placed.res_hyperprior):
        hyperprior.hyper_encoder.to("meta")
    return placed


def test_stream_parses_with_the_transforms_on_meta(tiny_model, carphone, monkeypatch):
    """Every symbol and every scale-table index comes out the same when the transforms compute nothing:
    what decides probabilities depends on the stream alone and runs on the CPU."""
    header = SSFCodec(tiny_model).header(carphone, intra_period=2)
    encoded = encode_sequence(tiny_model.model, tiny_model.model.entropy_tables(), carphone.frames_rgb(), header,
                              keep_latents=True)
    parsed, scale_inputs = [], []
    original_parse = Hyperprior.parse

    def recording_parse(self, *args, **kwargs):
        result = original_parse(self, *args, **kwargs)
        parsed.append(result)
        return result

    monkeypatch.setattr(Hyperprior, "parse", recording_parse)
    model = _meta_transforms(tiny_model.model)
    for hyperprior in (model.img_hyperprior, model.motion_hyperprior, model.res_hyperprior):
        hyperprior.hyper_decoder_scale.register_forward_pre_hook(
            lambda module, inputs: scale_inputs.append((inputs[0].device.type, inputs[0].dtype)))
    tables = model.entropy_tables()
    _, chunks = unpack(encoded.data)
    padded, x = padded_size(header.height, header.width), None
    for chunk in chunks:
        x = (model.decode_intra(*chunk.streams, padded, tables) if chunk.frame_type == 0
             else model.decode_inter(x, chunk.streams, padded, tables))
        assert x.device.type == "meta"  # the reconstruction was left to the transforms' device
    expected = [latent for frame in encoded.coded_latents for latent in frame.values()]
    assert len(parsed) == len(expected) == 2 + 2 * 2
    for (symbols, means, indexes), coded in zip(parsed, expected):
        assert symbols.device.type == means.device.type == indexes.device.type == "cpu"
        assert torch.equal(indexes, coded.y_indexes) and torch.equal(symbols, coded.y_symbols)
    assert scale_inputs and set(scale_inputs) == {("cpu", torch.float32)}


def test_latent_parameters_use_cpu_copies_of_modules_elsewhere(tiny_model, monkeypatch):
    """A hyperprior whose modules are not on the CPU (as after training on a GPU) is evaluated through CPU
    copies (workers.device.on_cpu) and gives the indices of the CPU module, on the CPU."""
    import workers.codec.hyperprior as hyperprior_module

    hyperprior = tiny_model.model.img_hyperprior
    z_hat = torch.randn(1, tiny_model.model.architecture.hyper_channels, 2, 3)
    means, indexes = hyperprior.latent_parameters(z_hat, (16, 24))
    copied = []

    def forced_copy(module):  # what on_cpu does for a module on another device: an exact copy
        copied.append(type(module).__name__)
        return copy.deepcopy(module)

    monkeypatch.setattr(hyperprior_module, "on_cpu", forced_copy)
    again_means, again_indexes = hyperprior.latent_parameters(z_hat, (16, 24))
    assert sorted(copied) == ["GaussianConditional", "HyperDecoder", "HyperDecoderWithQReLU"]
    assert torch.equal(indexes, again_indexes) and torch.equal(means, again_means)
    assert indexes.device.type == "cpu" and indexes.dtype == torch.int64


def test_on_cpu_returns_cpu_modules_themselves_and_copies_others():
    module = torch.nn.Linear(2, 2)
    assert on_cpu(module) is module and module_device(module).type == "cpu"
    meta = torch.nn.Linear(2, 2, device="meta")
    assert module_device(meta).type == "meta"


# ---------------------------------------------------------------- checkpoints are device-independent
def test_state_is_saved_on_the_cpu_and_maps_onto_any_device(tmp_path):
    from workers.adapt.state import load_state, save_state

    tensors = {"a": torch.arange(6.0).reshape(2, 3).t().requires_grad_(), "b": torch.ones(2)}
    as_stored = to_cpu_state_dict(tensors)
    assert all(v.device.type == "cpu" and v.is_contiguous() and not v.requires_grad for v in as_stored.values())
    save_state(tmp_path / "s.safetensors", tensors, {"config": "c"})
    loaded, info = load_state(tmp_path / "s.safetensors", "c")
    assert all(torch.equal(loaded[k], tensors[k].detach()) for k in tensors) and info["config"] == "c"
    moved = to_device(loaded, "meta")  # the map_location of a resume on another device
    assert {v.device.type for v in moved.values()} == {"meta"}


def test_pretrain_state_from_cpu_resumes_on_another_device(tmp_path):
    """A pretraining state written on the CPU loads into a trainer whose model sits on another device
    (`meta` here, a GPU in production): weights and Adam moments land on that device."""
    from schemas.pretrain import PretrainConfig
    from workers.pretrain.loop import Trainer

    config = PretrainConfig(data=[str(tmp_path)], architecture=ARCHITECTURE_PRESETS["tiny"], qualities=[1],
                            intra_steps=1, inter_steps=1, finetune_steps=1)
    cpu = Trainer(config, tmp_path)
    for p in cpu.model.parameters():  # Adam moments for every parameter, as after a step
        p.grad = torch.zeros_like(p)
    cpu.optimizer.step()
    cpu.save_state()
    elsewhere = Trainer(config, tmp_path, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: copying into meta parameters is a no-op (no values there)
        elsewhere.load_state(tmp_path / "state.safetensors")
    assert module_device(elsewhere.model).type == "meta"
    moments = [v for state in elsewhere.optimizer.state.values() for k, v in state.items() if k != "step"]
    assert len(moments) == 2 * len(list(cpu.model.parameters())) - 2 * 3  # exp_avg, exp_avg_sq; quantiles: aux
    assert {m.device.type for m in moments} == {"meta"}
    back = Trainer(config, tmp_path)  # and back onto the CPU: the same values
    back.load_state(tmp_path / "state.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(back.model.state_dict().values(), cpu.model.state_dict().values()))


# ---------------------------------------------------------------- the header's device kind
def test_device_kind_is_optional_in_the_header(stream):
    header, frames = unpack(stream)
    assert header.device is None and header.device_kind == "cpu"
    assert b"device" not in header_json(header)  # CPU streams keep their bytes (no new key)
    on_gpu = header.model_copy(update={"device": "cuda"})
    again, _ = unpack(pack(on_gpu, frames))
    assert again.device_kind == "cuda"
    with pytest.raises(ValueError):
        BitstreamHeader.model_validate(header.model_dump() | {"device": "tpu"})


def test_unknown_device_kind_in_a_stream_is_a_bitstream_error(stream):
    import struct
    import zlib

    header, frames = unpack(stream)
    head = json.dumps(header.model_dump(exclude_none=True) | {"device": "tpu"}, sort_keys=True,
                      separators=(",", ":")).encode()
    prefix = struct.pack("<BI", stream[4], len(head)) + head
    _, offset = _header_end(stream)
    crafted = stream[:4] + prefix + struct.pack("<I", zlib.crc32(prefix)) + stream[offset:]
    with pytest.raises(BitstreamError, match="device"):
        unpack(crafted)


def _header_end(data: bytes) -> tuple[int, int]:
    from workers.bitstream import unpack_header

    header, offset = unpack_header(data)
    return header.frame_count, offset


def test_expected_match():
    assert expected_match("cpu", "cpu") == "bit-exact" and expected_match("cuda", "cuda") == "bit-exact"
    assert expected_match("cuda", "cpu") == "parse-exact" and expected_match("cpu", "cuda") == "parse-exact"


def test_decode_reports_bit_exact_or_parse_exact(tmp_path, capsys, carphone_path, tiny_checkpoint):
    bits = tmp_path / "c.bits"
    assert main(["encode", str(carphone_path), "-o", str(bits), "--model", str(tiny_checkpoint), "--frames", "2",
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["decode", str(bits), "-o", str(tmp_path / "a.y4m"), "--model", str(tiny_checkpoint),
                 "--device", "cpu"]) == 0
    assert "bit-exact" in capsys.readouterr().out
    header, frames = unpack(bits.read_bytes())  # the same frames, labelled as coded on a GPU
    relabelled = tmp_path / "g.bits"
    relabelled.write_bytes(pack(header.model_copy(update={"device": "cuda"}), frames))
    assert main(["decode", str(relabelled), "-o", str(tmp_path / "b.y4m"), "--model", str(tiny_checkpoint),
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["device"] == "cuda" and info["expected_match"] == "parse-exact"
    assert (tmp_path / "a.y4m").read_bytes() == (tmp_path / "b.y4m").read_bytes()  # it parsed exactly


def test_cpu_device_keeps_streams_byte_identical(tmp_path, carphone_path, tiny_checkpoint):
    """--device cpu and the default (auto, outside Ray) write the same bytes."""
    for name, extra in (("default", []), ("cpu", ["--device", "cpu"])):
        assert main(["--threads", "1", "encode", str(carphone_path), "-o", str(tmp_path / f"{name}.bits"), "--model",
                     str(tiny_checkpoint), "--frames", "2", *extra]) == 0
    assert (tmp_path / "default.bits").read_bytes() == (tmp_path / "cpu.bits").read_bytes()


def test_use_device_on_cpu_sets_no_global_flag():
    before = torch.are_deterministic_algorithms_enabled()
    assert use_device("cpu").type == "cpu"
    assert torch.are_deterministic_algorithms_enabled() == before
