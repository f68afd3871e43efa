"""Shared by the decoder-side methods (decoder-lora, full-decoder): train an update of the SSF decoders on
the video, code it as a payload, rebuild the decoder from base + payload exactly as a decoder does, and
code the video with that decoder (workers/adapt/decoder_updates.py defines the updates themselves)."""

from __future__ import annotations

import time
from pathlib import Path

from workers.adapt.decoder_updates import DecoderUpdate, apply_update, coded_key, make_update, payload_name
from workers.errors import BitstreamError, InputError
from workers.methods.registry import AdaptContext, Method, MethodOutcome, parse_method_config


def train_update(context: AdaptContext, config,
                 stream_method: str | None = None) -> tuple[DecoderUpdate, int, int, float]:
    """Train (or continue from the unit's checkpoint) the update ``config`` describes on the padded frames;
    the update left is the best state by the sequence RD cost with the real payload bytes (the base model,
    i.e. a zero update, included). ``stream_method``: the method the unit's stream header will name (default
    ``config.method``; a method that wraps this update names itself, and its header bytes are what is paid).
    Returns (update, steps, steps found in the checkpoint, seconds)."""
    from workers.adapt.training import train_decoder_update
    from workers.codec.ssf import pad_frame
    from workers.device import module_device
    from workers.video_io import SourceFrames

    base = context.codec.loaded
    device = module_device(base.model)  # training runs where the model was placed (workers/device.py)
    frames = SourceFrames(context.video, lambda frame: pad_frame(frame.unsqueeze(0).to(device))[0])  # (3, H16, W16)
    update = make_update(base.model, config)
    began = time.perf_counter()
    steps, resumed = train_decoder_update(base.model, update, config.prior, config.training, frames, context.pixels,
                                          context.lmbda, config.seed, context.checkpoint_dir / "decoder-state.safetensors",
                                          context.config_json, on_log=lambda r: context.log({"phase": "decoder", **r}),
                                          eval_gop=context.intra_period or len(frames),
                                          payload_bits=lambda u: 8 * update_bytes(context, config, payload_for(base, config, u),
                                                                                  stream_method),
                                          include_base=config.send_update == "if-better",
                                          coded_cost=(lambda u: coded_rd_cost(context, config, u, stream_method))
                                          if config.training.evaluate == "coded" else None)
    return update, steps, resumed, time.perf_counter() - began


def _named_method(config, stream_method: str | None) -> str:
    """The method the unit's stream header names: ``stream_method`` when a wrapping method gives one, else the
    update's own (``config.method``)."""
    return stream_method or config.method


def coded_rd_cost(context: AdaptContext, config, update: DecoderUpdate,
                  stream_method: str | None = None) -> dict[str, float]:
    """The RD cost of sending ``update`` as the unit would: its payload, the decoder rebuilt from it, the
    whole sequence coded with that decoder; every byte written counted (stream + payload), the distortion
    the codec measures. The zero update is the base model's stream. Same number as Candidate.cost. The
    cheapest trained state's stream stays in ``context.streams``: it is the state training keeps whenever
    one is sent, so the method's final candidate reuses it instead of coding the sequence again."""
    payload = payload_for(context.codec.loaded, config, update)
    encoded = encode_with_payload(context, config, payload, stream_method)
    candidate = context.candidate(encoded, payload)
    cost = candidate.cost(context.lmbda, context.pixels)
    method = _named_method(config, stream_method)
    kept = context.streams.get(method)
    if payload is not None and (kept is None or cost < kept[0]):
        context.streams[method] = (cost, payload, encoded)
    return {"cost": cost, "mse": candidate.distortion,
            "bpp": 8 * len(encoded.data) / context.pixels, "payload_bits": 8 * len(payload or b"")}


def encode_with_payload(context: AdaptContext, config, payload: bytes | None, stream_method: str | None = None):
    """The unit's video coded with the decoder ``payload`` rebuilds (None: the base model), the stream naming
    the payload; the stream :func:`coded_rd_cost` kept for this payload when there is one (coding is
    deterministic: the same bytes). ``stream_method``: as in :func:`train_update`."""
    method = _named_method(config, stream_method)
    kept = context.streams.get(method)
    if payload is not None and kept is not None and kept[1] == payload:
        return kept[2]
    options = {} if payload is None else {"method": method, "payload": payload,
                                          "model": rebuild_decoder(context.codec.loaded, payload, None)}
    return context.codec.encode(context.video, context.intra_period, **options)


def update_bytes(context: AdaptContext, config, payload: bytes | None, stream_method: str | None = None) -> int:
    """Every byte that sending ``payload`` adds to the unit: the payload itself plus what the stream header
    grows by when it names the payload (method and payload sha256: 92 bytes for decoder-lora). Training's
    state choice counts the same bytes as the final send decision (issue 14); 0 for no payload."""
    if payload is None:
        return 0
    from workers.bitstream import header_json

    codec, video = context.codec, context.video
    named = header_json(codec.header(video, context.intra_period, _named_method(config, stream_method), payload))
    plain = header_json(codec.header(video, context.intra_period))
    return len(payload) + len(named) - len(plain)


def payload_for(base, config, update: DecoderUpdate) -> bytes | None:
    """The payload of the trained update, or None when every grid index is zero (nothing to send)."""
    from workers.adapt.payload import WeightUpdate, encode_payload, make_header
    from workers.adapt.prior import grid_indices

    indices = {payload_name(k): grid_indices(v, config.prior.grid).cpu() for k, v in update.coded.items()}
    if all(int(k.abs().max()) == 0 for k in indices.values() if k.numel()):
        return None
    structure = config.model_dump(mode="json", include=set(config.STRUCTURE_FIELDS))
    structure, indices = sent_structure(structure, indices)
    header = make_header(base.metadata.weights_sha256, config.method, structure, config.prior, indices, fit_prior=True)
    return encode_payload(WeightUpdate(header, indices))


def sent_structure(structure: dict, indices: dict[str, "torch.Tensor"]) -> tuple[dict, dict[str, "torch.Tensor"]]:
    """The structure and indices the payload carries: a decoder-lora group whose indices are all zero is left
    out (every B zero: ranks 0; every bias zero: biases off), so a zero group costs no bits and the coded
    evaluation judges the bias-only states of the first training stage as what they are (issue 14: a zero
    LoRA beside 441 biases cost ~2.7 kbit under one fitted table). The decoder rebuilds the same weights:
    with B = 0 a LoRA adds exactly nothing, whatever A is."""
    if "ranks" not in structure:
        return structure, indices
    lora_b = [k for name, k in indices.items() if name.endswith(".lora_B")]
    biases = [k for name, k in indices.items() if name.endswith(".bias_delta")]
    if lora_b and biases and all(int(k.abs().max()) == 0 for k in lora_b):
        keep = {name: k for name, k in indices.items() if name.endswith(".bias_delta")}
        return structure | {"ranks": [0]}, keep
    if biases and all(int(k.abs().max()) == 0 for k in biases):
        return structure | {"biases": False}, {n: k for n, k in indices.items() if not n.endswith(".bias_delta")}
    return structure, indices


def rebuild_decoder(base, payload: bytes, source: str | Path | None):
    """Base model + payload of a decoder update -> the model whose decoders carry the update. The tensor list
    is rebuilt from the base model and the payload's structure options (never sent)."""
    from workers.adapt.payload import decode_payload

    built = {}

    def shapes_for(header) -> dict[str, tuple[int, ...]]:
        try:
            config = parse_method_config(header.method, header.structure)
        except InputError as exc:
            raise BitstreamError(source, f"invalid payload header ({exc.cause})") from None
        if not hasattr(config, "STRUCTURE_FIELDS"):
            raise BitstreamError(source, f"payload method {header.method!r} has no decoder weight update")
        built["template"] = make_update(base.model, config)
        return {payload_name(k): tuple(v.shape) for k, v in built["template"].coded.items()}

    update = decode_payload(payload, base.metadata.weights_sha256, shapes_for, source)
    from workers.device import module_device

    device = module_device(base.model)  # the payload is parsed on the CPU; the weights are built where the model is
    values = {coded_key(name): value.to(device) for name, value in update.dequantized().items()}
    return apply_update(base.model, built["template"], values)


class DecoderUpdateMethod(Method):
    """A decoder-side SSF update sent as a payload (subclasses name the method; the config says which update)."""

    codecs = ("ssf",)

    def adapt(self, context: AdaptContext, config) -> MethodOutcome:
        update, steps, resumed, seconds = train_update(context, config)
        payload = payload_for(context.codec.loaded, config, update)
        outcome = MethodOutcome(steps=steps, resumed=resumed, train_seconds=seconds)
        if payload is None:
            return outcome  # every coded index is zero: nothing to try
        encoded = encode_with_payload(context, config, payload)  # with exactly the decoder the payload rebuilds
        outcome.candidates.append(context.candidate(encoded, payload))
        return outcome

    def rebuild(self, base, payload: bytes, source: str | Path | None = None):
        return rebuild_decoder(base, payload, source)
