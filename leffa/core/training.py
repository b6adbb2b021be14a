"""One training forward pass: the diffusion loss plus, optionally, the Leffa loss (paper §3).

Kept in the library (not in ``train/``) because it is the model's training objective; the trainer script only
adds data loading, optimisation, checkpointing and logging around :func:`training_losses`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import Tensor

from leffa.core.flow import FlowSupervisionConfig, LeffaLossConfig, flow_supervision_loss, leffa_loss
from leffa.core.model import LeffaModel
from leffa.core.recording import LeffaRegisters, record_attention, select_layers


@dataclass
class TrainingLosses:
    """``loss`` is what to back-propagate; the rest is for logging (detached)."""

    loss: Tensor
    diffusion: Tensor
    leffa: Tensor | None = None
    leffa_per_layer: dict[str, Tensor] = field(default_factory=dict)
    flow_supervision: Tensor | None = None

    def log_values(self) -> dict[str, float]:
        values = {"loss/total": float(self.loss.detach()), "loss/diffusion": float(self.diffusion)}
        if self.flow_supervision is not None:
            values["loss/flow_supervision"] = float(self.flow_supervision)
        if self.leffa is not None:
            values["loss/leffa"] = float(self.leffa)
            values.update({f"leffa/{name}": float(v) for name, v in self.leffa_per_layer.items()})
        return values


def expand_conv_in(weight: Tensor, bias: Tensor, in_channels: int) -> tuple[Tensor, Tensor]:
    """New ``conv_in`` weights for a different input width: zeros, with the first min(old, new) channels
    copied from the base and the bias copied (how the released models were initialised)."""
    out = torch.zeros(weight.shape[0], in_channels, *weight.shape[2:], dtype=weight.dtype)
    keep = min(in_channels, weight.shape[1])
    out[:, :keep] = weight[:, :keep]
    return out, bias.clone()


def init_state_from_base(
    unet: Mapping[str, Tensor], vae: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Released-format state dict initialised from a base inpainting UNet (9 input channels) and VAE.

    Both UNets start from the base UNet; their ``conv_in`` is expanded/cut to 12 and 4 channels.
    """
    state = {f"vae.{name}": t for name, t in vae.items()}
    for prefix, channels in (("unet_encoder.", 4), ("unet.", 12)):
        for name, tensor in unet.items():
            state[prefix + name] = tensor
        weight, bias = expand_conv_in(unet["conv_in.weight"], unet["conv_in.bias"], channels)
        state[prefix + "conv_in.weight"], state[prefix + "conv_in.bias"] = weight, bias
    return state


def _target(scheduler: DDPMScheduler, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r} (epsilon or v_prediction)")


def _encode(model: LeffaModel, images: Tensor, generator: torch.Generator | None, drawn) -> Tensor:
    """:meth:`LeffaModel.encode_image` with the posterior's noise drawn through ``drawn`` (for the global
    micro-batch): the same numbers as diffusers' ``latent_dist.sample(generator)`` for one process."""
    posterior = model.vae.encode(images.to(model.device, model.vae.dtype)).latent_dist
    parameters = posterior.parameters
    device = generator.device if generator is not None else parameters.device
    eps = drawn(lambda shape: torch.randn(shape, generator=generator, device=device, dtype=parameters.dtype),
                posterior.mean.shape).to(parameters.device)
    return ((posterior.mean + posterior.std * eps) * model.latent_scale).to(model.dtype)


def training_losses(
    model: LeffaModel,
    batch: Mapping[str, Tensor],
    scheduler: DDPMScheduler,
    *,
    generator: torch.Generator | None = None,
    leffa: LeffaLossConfig | None = None,
    reference_dropout: float = 0.1,
    registers: LeffaRegisters | None = None,
    flow_supervision: FlowSupervisionConfig | None = None,
    diffusion_weight: float = 1.0,
    shard: tuple[int, int] = (0, 1),
) -> TrainingLosses:
    """Diffusion loss (+ ``leffa.weight`` × Leffa loss when ``leffa`` is given) for one batch.

    ``batch`` holds ``image`` (target person), ``reference``, ``mask`` and ``densepose`` in the released
    normalisation. A sample's reference is replaced by an all-zero latent with probability
    ``reference_dropout`` (the unconditional branch used by classifier-free guidance at inference); such
    samples get no Leffa loss. The VAE is frozen (encoded without gradients).

    ``shard`` = (process index, process count) of a distributed run: ``generator`` is then the same on every
    process and draws (VAE posterior samples, reference dropout, noise, timesteps) for the whole global
    micro-batch, of which this process keeps samples ``index, index + count, ...`` (the samples its data
    shard holds). So a run draws the same numbers for every sample however its global batch is split over
    processes, and one process (``(0, 1)``) draws exactly what it always has.

    ``flow_supervision`` adds the teacher term :func:`leffa.core.flow.flow_supervision_loss` (not in the
    paper) on the same layers; the batch must then hold the true ``flow`` (B, H, W, 2) and ``flow_valid``
    (B, 1, H, W). With both terms the attention is recorded once, so their temperatures must agree.
    ``diffusion_weight`` scales the diffusion loss (0 trains on the attention terms alone, an ablation). A
    Leffa ``mask`` of ``garment`` restricts that loss to ``mask * flow_valid`` (synthetic data only).
    """
    if flow_supervision is not None:
        if "flow" not in batch or "flow_valid" not in batch:
            raise KeyError("flow_supervision needs the batch's true flow: keys flow and flow_valid")
        if leffa is not None and leffa.temperature != flow_supervision.temperature:
            raise ValueError(
                f"leffa.temperature ({leffa.temperature}) and flow_supervision.temperature "
                f"({flow_supervision.temperature}) must agree: both read the same recorded attention"
            )
    if leffa is not None and leffa.mask == "garment" and "flow_valid" not in batch:
        raise KeyError("leffa.mask 'garment' needs the batch's flow_valid (the garment pixels)")
    if not 0 <= reference_dropout <= 1:
        raise ValueError(f"reference_dropout must be in [0, 1], got {reference_dropout}")
    missing = [key for key in ("image", "reference", "mask", "densepose") if key not in batch]
    if missing:
        raise KeyError(f"batch is missing {missing}; expected image, reference, mask and densepose")
    device = model.device
    image, reference, mask, densepose = (batch[k].to(device) for k in ("image", "reference", "mask", "densepose"))
    size = image.shape[0]
    factor = model.vae_scale_factor
    latent_hw = (image.shape[-2] // factor, image.shape[-1] // factor)
    draw_device = generator.device if generator is not None else torch.device("cpu")
    rank, count = shard
    if not 0 <= rank < count:
        raise ValueError(f"shard must be (process index, process count) with 0 <= index < count, got {shard}")

    def drawn(draw, shape: tuple[int, ...]) -> Tensor:
        """This process's samples of a draw for the whole global micro-batch."""
        return draw((shape[0] * count, *shape[1:]))[rank::count]

    with torch.no_grad():
        latents = _encode(model, image, generator, drawn)
        masked_latents = _encode(model, image * (mask < 0.5), generator, drawn)
        ref_latents = _encode(model, reference, generator, drawn)
    keep = drawn(lambda shape: torch.rand(shape, generator=generator, device=draw_device), (size,)) >= reference_dropout
    ref_latents = ref_latents * keep.to(device, ref_latents.dtype).view(-1, 1, 1, 1)
    noise = drawn(
        lambda shape: torch.randn(shape, generator=generator, device=draw_device, dtype=torch.float32), latents.shape
    ).to(device)
    timesteps = drawn(
        lambda shape: torch.randint(
            0, scheduler.config.num_train_timesteps, shape, generator=generator, device=draw_device
        ),
        (size,),
    ).to(device)
    noisy = scheduler.add_noise(latents.float(), noise, timesteps)
    mask_latent = F.interpolate(mask, size=latent_hw, mode="nearest")
    dense_latent = F.interpolate(densepose, size=latent_hw, mode="nearest")

    features = model.reference_features(ref_latents, timesteps)
    inputs = (noisy, mask_latent, masked_latents, dense_latent, timesteps, features)
    # Only samples with a reference and t below a term's θ_timestep get an attention term: record those alone.
    terms = [term for term in (leffa, flow_supervision) if term is not None]
    theta = max((term.theta_timestep for term in terms), default=0)
    active = torch.nonzero(keep.to(device) & (timesteps < theta)).squeeze(1)
    rec = None
    theta_resolution = leffa.theta_resolution if leffa is not None else LeffaLossConfig.theta_resolution
    layers = select_layers(model, tuple(image.shape[-2:]), theta_resolution) if terms else []
    if active.numel() > 0:
        rec = record_attention(
            model, layers, flows=True, temperature=terms[0].temperature, registers=registers, batch_rows=active
        )
    prediction = model.predict_noise(*inputs, observer=rec)
    diffusion = F.mse_loss(prediction.float(), _target(scheduler, latents.float(), noise, timesteps))
    losses = TrainingLosses(loss=diffusion_weight * diffusion, diffusion=diffusion.detach())
    share = active.numel() / size  # the terms are means over the whole batch, ignored samples counting 0
    if leffa is not None:
        losses.leffa = diffusion.new_zeros(())
        # Every layer is reported even when no sample is active, so all processes log the same keys.
        losses.leffa_per_layer = {name: diffusion.new_zeros(()) for name in layers}
        if rec is not None:
            region = mask if leffa.mask == "inpainting" else mask * batch["flow_valid"].to(device)
            result = leffa_loss(
                rec.flows_at(None), reference[active], image[active], region[active], timesteps[active],
                theta_timestep=leffa.theta_timestep, reduction=leffa.reduction,
            )
            losses.loss = losses.loss + leffa.weight * share * result.total
            losses.leffa = (share * result.total).detach()
            losses.leffa_per_layer = {name: (share * value).detach() for name, value in result.per_layer.items()}
    if flow_supervision is not None:
        losses.flow_supervision = diffusion.new_zeros(())
        if rec is not None:
            taught = flow_supervision_loss(
                rec.flows_at(None), batch["flow"].to(device)[active], batch["flow_valid"].to(device)[active],
                timesteps[active], theta_timestep=flow_supervision.theta_timestep,
            )
            losses.loss = losses.loss + flow_supervision.weight * share * taught.total
            losses.flow_supervision = (share * taught.total).detach()
    return losses
