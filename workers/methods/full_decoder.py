"""Method ``full-decoder``: every weight of the SSF decoders fine-tuned, W - W_base sent as a payload
(van Rozendaal et al.). Config: schemas/methods/full_decoder.py; the update: workers/adapt/decoder_updates.py."""

from __future__ import annotations

from workers.methods._decoder_update import DecoderUpdateMethod
from workers.methods.registry import register_method


@register_method
class FullDecoderMethod(DecoderUpdateMethod):
    name = "full-decoder"
