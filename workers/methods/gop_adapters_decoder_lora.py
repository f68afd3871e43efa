"""Method ``gop-adapters+decoder-lora``: decoder LoRA trained on the sequence first, then per-GoP encoder
adapters on top of the adapted model. The adapters are encoder-side, so the encoder may also drop them and
send the LoRA-coded stream alone when that is cheaper (candidate ``sent-lora-only``), or drop the LoRA and
send the base model's stream with adapters trained on the base model, which needs no payload (candidate
``sent-adapters-only``, issue 14: the LoRA does not pay on every sequence, the adapters may)."""

from __future__ import annotations

from workers.methods._decoder_update import encode_with_payload, payload_for, train_update
from workers.methods._gop_encoder import gop_adapter_encoders
from workers.methods.registry import METHODS, AdaptContext, Method, MethodOutcome, register_method


@register_method
class GopAdaptersDecoderLoraMethod(Method):
    name = "gop-adapters+decoder-lora"
    codecs = ("ssf",)

    def adapt(self, context: AdaptContext, config) -> MethodOutcome:
        base = context.codec.loaded
        update, steps, resumed, seconds = train_update(context, config.lora, stream_method=config.method)
        payload = payload_for(base, config.lora, update)
        # the payload names decoder-lora: its rebuild is exactly what the decoder will run
        model = base.model if payload is None else METHODS[config.lora.method].rebuild(base, payload)
        counters = {"steps": 0, "resumed": 0, "seconds": 0.0}
        encoders = gop_adapter_encoders(model, config.adapters, context, counters)
        adapted = context.codec.encode(context.video, context.intra_period, method=config.method, payload=payload,
                                       model=model, **encoders)
        outcome = MethodOutcome([context.candidate(adapted, payload)], steps + counters["steps"],
                                resumed + counters["resumed"], seconds + counters["seconds"])
        if payload is not None and config.send_update != "always":
            lora_only = encode_with_payload(context, config.lora, payload, config.method)  # training coded it
            outcome.candidates.append(context.candidate(lora_only, payload, "sent-lora-only"))
            outcome.candidates.append(self._adapters_only(context, config, outcome))
        return outcome

    @staticmethod
    def _adapters_only(context: AdaptContext, config, outcome: MethodOutcome):
        """Adapters trained on the base model (their own checkpoints), no payload: gop-adapters' stream."""
        counters = {"steps": 0, "resumed": 0, "seconds": 0.0}
        encoders = gop_adapter_encoders(context.codec.loaded.model, config.adapters, context, counters,
                                        checkpoint_prefix="base-adapters")
        encoded = context.codec.encode(context.video, context.intra_period, method=config.method, **encoders)
        outcome.steps += counters["steps"]
        outcome.resumed += counters["resumed"]
        outcome.train_seconds += counters["seconds"]
        return context.candidate(encoded, None, "sent-adapters-only")
