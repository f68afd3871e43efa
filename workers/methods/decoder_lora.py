"""Method ``decoder-lora``: LoRA on every transposed conv of the SSF decoders (PEVC), sent as a payload.
Config: schemas/methods/decoder_lora.py; the update: workers/adapt/decoder_updates.py (LoraUpdate)."""

from __future__ import annotations

from workers.methods._decoder_update import DecoderUpdateMethod
from workers.methods.registry import register_method


@register_method
class DecoderLoraMethod(DecoderUpdateMethod):
    name = "decoder-lora"
