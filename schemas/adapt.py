"""Configuration and results of per-video adaptation (`adaptjobs adapt`, one unit of a run).

One pydantic model per method, discriminated by ``method``; the CLI choices come from METHOD_CONFIGS.
Defaults are the ones measured to run on a 2-core CPU in minutes per sequence (benchmarks/RESULTS.md);
the papers' GPU settings are noted where they differ.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.results import EncodeResult


class WeightPrior(BaseModel):
    """Spike-and-slab prior p(d) = [N(d|0, sigma^2) + alpha N(d|0, spike_std^2)] / (1 + alpha) on every
    coded weight update d, quantized on a grid of width ``grid`` (van Rozendaal et al.; PEVC)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grid: float = Field(0.005, gt=0, description="quantization step t of the weight updates")
    slab_std: float = Field(0.05, gt=0, description="sigma: std of the wide (slab) component")
    spike_std: float | None = Field(None, gt=0, description="s: std of the narrow (spike) component; default grid/6")
    alpha: float = Field(1000.0, gt=0, description="weight of the spike relative to the slab")

    @property
    def spike(self) -> float:
        return self.spike_std if self.spike_std is not None else self.grid / 6.0


class DecoderTraining(BaseModel):
    """How a decoder-side update is trained on the test video itself.

    An epoch visits every training clip (``train_gop`` consecutive frames, starting at multiples of
    ``train_gop``) once in a seeded order, ``batch`` clips per step, each a random ``crop`` x ``crop`` window.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(8, ge=0, description="0 = no training: the update stays zero (PEVC: 15 on GPU)")
    train_gop: int = Field(4, ge=1, le=32, description="frames per training clip: I + P-frames (PEVC: 4)")
    batch: int = Field(2, ge=1, description="clips per step (PEVC: 3)")
    crop: int = Field(256, ge=128, description="crop side in px, a multiple of 128 (whole frame if smaller)")
    learning_rate: float = Field(3e-3, gt=0, description="Adam (PEVC: 5e-4 for LoRA, 1e-4 full fine-tuning, with "
                                                         "hundreds of steps on a GPU; we take tens)")
    adam_eps: float = Field(1e-3, gt=0, description=(
        "Adam's epsilon, of the order of the update's gradients: with the default 1e-8 Adam moves every weight by "
        "~lr per step whatever its gradient, so within a few steps most weights leave the zero bin and the payload "
        "explodes (measured on foreman: 5.3 Mbit after 10 steps at lr 1e-3); eps ~ |gradient| keeps weak-gradient "
        "weights at zero"))
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="ReduceLROnPlateau factor on the epoch loss")
    plateau_patience: int = Field(1, ge=0)
    checkpoint_every: int = Field(5, ge=1, description="steps between atomic state checkpoints")

    @model_validator(mode="after")
    def _crop_multiple(self) -> "DecoderTraining":
        if self.crop % 128:
            raise ValueError("crop must be a multiple of 128")
        return self


SendUpdate = Literal["if-better", "always"]
SEND_UPDATE_HELP = ("if-better: send the adapted result only when its RD cost (payload included) beats the base "
                    "model's on this sequence; always: send it regardless (for experiments)")


class NoneConfig(BaseModel):
    """The base model, unchanged: the reference every method is compared with."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    method: Literal["none"] = "none"


class DecoderLoraConfig(BaseModel):
    """LoRA on every ConvTranspose2d of the I-frame, motion and residual decoders (PEVC, seed 003).

    ``extended``: A in R^{rK x Cin K}, B in R^{Cout K x rK}, dW = reshape(BA).
    ``repeat``:   A in R^{r x Cin},    B in R^{Cout x r},    dW = BA tiled over the K x K kernel.
    A starts from a generator seeded with ``init_seed`` (stored in the payload, so never sent), B from
    zeros; the payload codes B and A - A_init.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    method: Literal["decoder-lora"] = "decoder-lora"
    STRUCTURE_FIELDS: ClassVar[tuple[str, ...]] = ("variant", "ranks", "init_seed")  # what the payload carries
    send_update: SendUpdate = Field("if-better", description=SEND_UPDATE_HELP)
    variant: Literal["extended", "repeat"] = "extended"
    ranks: tuple[int, ...] = Field((16, 8, 8, 2), min_length=1, description="rank per deconv, first layer first")
    init_seed: int = Field(0, ge=0, lt=2**31)
    prior: WeightPrior = WeightPrior(grid=0.002)
    training: DecoderTraining = DecoderTraining()
    seed: int = Field(0, ge=0, description="crop and clip order")


class FullDecoderConfig(BaseModel):
    """Every weight and bias of the three decoders fine-tuned; W - W_base coded (van Rozendaal et al.).
    The entropy models are not adapted (their tables would have to travel too)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    method: Literal["full-decoder"] = "full-decoder"
    STRUCTURE_FIELDS: ClassVar[tuple[str, ...]] = ()  # every decoder weight: nothing to choose
    send_update: SendUpdate = Field("if-better", description=SEND_UPDATE_HELP)
    prior: WeightPrior = WeightPrior(grid=0.001)
    training: DecoderTraining = DecoderTraining(learning_rate=1e-3)
    seed: int = Field(0, ge=0)


class GopAdaptersConfig(BaseModel):
    """Encoder-side adapters trained per GoP with patch-based GoP updating (seed 002, Algorithm 1).

    Parallel adapters beside every conv of the motion and residual encoders, serial adapters after the
    motion and residual hyper-encoders; only P-frames are adapted. Nothing is sent: a stock decoder
    decodes the stream.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    method: Literal["gop-adapters"] = "gop-adapters"
    send_update: SendUpdate = Field("if-better", description=SEND_UPDATE_HELP)
    hidden_channels: int = Field(8, ge=1, description="C_dw, the adapter's squeezed width")
    kernel_size: int = Field(3, ge=1, le=7, description="M, the depthwise kernel")
    steps: int = Field(4, ge=0, description="MAX: passes over the GoP's patch-GoPs")
    patch: int = Field(128, ge=128, description="patch-GoP side in px, a multiple of 128")
    learning_rate: float = Field(1e-3, gt=0)
    rate_proxy: Literal["noise", "rounded"] = Field(
        "noise", description="what the rate term is evaluated at while training: latents + U(-0.5, 0.5) (its "
                             "gradient is informative) or the rounded latents (the exact coded cost, straight-through)")
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _patch_multiple(self) -> "GopAdaptersConfig":
        if self.patch % 128:
            raise ValueError("patch must be a multiple of 128")
        return self


class GopAdaptersDecoderLoraConfig(BaseModel):
    """Both: decoder LoRA trained on the sequence first, then per-GoP encoder adapters on top of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    method: Literal["gop-adapters+decoder-lora"] = "gop-adapters+decoder-lora"
    send_update: SendUpdate = Field("if-better", description=SEND_UPDATE_HELP)
    lora: DecoderLoraConfig = DecoderLoraConfig()
    adapters: GopAdaptersConfig = GopAdaptersConfig()


MethodConfig = Annotated[Union[NoneConfig, DecoderLoraConfig, FullDecoderConfig, GopAdaptersConfig,
                               GopAdaptersDecoderLoraConfig], Field(discriminator="method")]

METHOD_CONFIGS: dict[str, type[BaseModel]] = {
    "none": NoneConfig,
    "decoder-lora": DecoderLoraConfig,
    "full-decoder": FullDecoderConfig,
    "gop-adapters": GopAdaptersConfig,
    "gop-adapters+decoder-lora": GopAdaptersDecoderLoraConfig,
}


class AdaptResult(EncodeResult):
    """One adapted sequence: EncodeResult (rates of the .bits alone) plus the payload and the decision."""

    payload: str | None = Field(None, description="path of the .payload file; None when nothing is sent")
    payload_bytes: int = Field(0, ge=0)
    bpp_without_payload: float = Field(ge=0)
    bpp_with_payload: float = Field(ge=0, description="(bits + payload bytes) * 8 / (W * H * frames)")
    payload_share: float = Field(ge=0, le=1, description="payload bytes / (bitstream + payload bytes)")
    update_sent: bool = Field(description="whether the adapted result (not the base model's) was sent")
    decision: Literal["sent", "sent-lora-only", "base-cheaper", "zero-update", "base-method"] = Field(
        description="sent: adapted result sent; sent-lora-only (gop-adapters+decoder-lora): the LoRA update "
                    "without the encoder adapters was cheapest and was sent; base-cheaper: nothing adapted beat "
                    "the base model's RD cost; zero-update: training left every coded index at zero and no "
                    "encoder change; base-method: none")
    rd_cost: float = Field(description="lambda * 255^2 * MSE + bpp_with_payload of what was sent")
    rd_cost_base: float = Field(description="the same for the base model on this sequence")
    bpp_base: float = Field(description="bpp of the base model's stream on this sequence (the `none` point)")
    psnr_rgb_base: float = Field(description="PSNR-RGB of the base model's stream on this sequence")
    rd_cost_adapted: float | None = Field(None, description="the same for the adapted result, sent or not "
                                                            "(None when there was nothing to try)")
    bpp_adapted: float | None = Field(None, description="bits + payload per pixel of the adapted result, sent or not")
    psnr_rgb_adapted: float | None = Field(None, description="PSNR-RGB of the adapted result, sent or not")
    lmbda: float
    adaptation_steps: int = Field(ge=0)
    train_seconds: float = Field(0.0, ge=0, description="time spent in training loops (decoder update, adapters)")
    adapt_seconds: float = Field(ge=0, description="the whole unit: base encode, training, final encode, verification")
    resumed_from_step: int = Field(0, ge=0, description="steps found in the checkpoint when this run started")
    config: dict


class PayloadHeader(BaseModel):
    """What a decoder needs, besides the base model, to rebuild the adapted weights from the coded indices.

    Only what the decoder cannot rebuild travels: the base model's hash, the method and the options that fix
    the update's tensors (``structure``, e.g. LoRA variant, ranks and the seed of A's initialisation), the
    prior and the table bound. The tensor list itself (names, shapes, order) is rebuilt by the decoder from
    the base model and ``structure``; ``tensors_sha256`` fingerprints it so a mismatch is refused. (Sending
    the list and the full training config cost 1.9 KB per payload, more than the coded weights of a
    decoder-lora update at low rates.) The coded symbols are the grid indices of every tensor, flattened
    row-major in that order, shifted by ``bound`` into 0..2*bound.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_weights_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    method: str = Field(min_length=1, max_length=64)
    structure: dict = Field(description="the method options that fix the update's tensors (the method's STRUCTURE_FIELDS)")
    prior: WeightPrior
    bound: int = Field(ge=1, le=1 << 20, description="K: the table covers grid indices -K..K")
    tensors_sha256: str = Field(pattern="^[0-9a-f]{16}$",
                                description="first 16 hex digits of the sha256 of the (name, shape) list, in coding order")
