"""The Leffa sampler: the released inference procedure, with every random draw under the caller's control.

Per step: the reference UNet encodes the reference latent (the unconditional half is an all-zero latent
whose features depend only on the timestep and are cached), the generative UNet predicts noise for
``[uncond, cond]``, classifier-free guidance and the guidance rescale of Lin et al. (2023) are applied, and
a DDPM step follows. See ``shared/reference/README.md`` §3 for the released behaviour this reproduces.

A call keeps its state (scheduler, features, timestep, observer) to itself and hands it to the model per
step, so pipelines on one model may run concurrently and a failed call leaves nothing behind.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import gaussian_blur

from leffa.core.attention import AttentionObserver
from leffa.core.memory import apply_memory_level, encoding_done
from leffa.core.model import LeffaModel
from leffa.core.settings import SamplingSettings, check_num_images
from leffa.core.transforms import DensePoseFormat, densepose_to_tensor, image_to_tensor, mask_to_tensor, tensor_to_uint8
from leffa.core.validation import check_finite, check_generated, check_sampling_settings, check_seed

OutputType = Literal["pil", "np", "pt"]
OUTPUT_TYPES: tuple[str, ...] = ("pil", "np", "pt")
ImageInput = torch.Tensor | Image.Image | Sequence[Image.Image]
#: Called after every denoising step with (step index from 1, number of steps, timestep).
StepCallback = Callable[[int, int, int], None]
_DEFAULT_CACHE_BYTES = 2 * 1024**3


@dataclass
class LeffaOutput:
    """Generated images plus what is needed to reproduce them. Indexing and iteration go to ``images``."""

    images: Any
    seed: int | None
    timesteps: list[int] = field(default_factory=list)
    #: Each image's seed (``num_images`` > 1: ``seed``, ``seed + 1``, ...; image i is what a run with seed i makes).
    seeds: list[int] = field(default_factory=list)

    def __getitem__(self, index):
        return self.images[index]

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self):
        return iter(self.images)


def rescale_noise_cfg(guided: torch.Tensor, conditional: torch.Tensor, factor: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023): match the std of the guided prediction to the conditional one.

    ``factor`` is φ in ``φ·guided·std(c)/std(guided) + (1-φ)·guided``; stds per sample over C, H, W.
    Not diffusers' ``rescale_noise_cfg``: it computes ``φ·(guided·ratio)`` where this computes
    ``(φ·guided)·ratio``, which differs in the last bit for about a third of the elements.
    """
    dims = list(range(1, guided.ndim))
    std_cond = conditional.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    return factor * guided * (std_cond / std_guided) + (1.0 - factor) * guided


def _initial_noise(shape: tuple[int, ...], generator: torch.Generator | list[torch.Generator]) -> torch.Tensor:
    """float32 noise of ``shape``; with one generator per image, each image's is what a run of its own draws."""
    if isinstance(generator, list):
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=torch.float32) for g in generator])
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)


def repaint_images(person: torch.Tensor, result: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Paste the generated region into the person image through a blurred mask (released option).

    The kernel size is ``H // 100`` made odd; its sigma is OpenCV's default for that size (the released
    code drew a random sigma, which made results irreproducible).
    """
    kernel = person.shape[-2] // 100
    kernel += 1 - kernel % 2
    soft = mask.float()
    if kernel > 1:
        soft = gaussian_blur(soft, [kernel, kernel], [0.3 * ((kernel - 1) * 0.5 - 1) + 0.8] * 2)
    return person * (1 - soft) + result * soft


def resolve_seed(seed: int | None) -> int:
    """``None`` or ``-1`` picks a random seed (reported in the output); otherwise the seed is kept."""
    if seed is None or seed == -1:
        return random.SystemRandom().randrange(0, 2**31 - 1)
    return check_seed(seed)


class LeffaPipeline:
    """Virtual try-on / pose transfer sampling with a :class:`LeffaModel`.

    ``uncond_cache_bytes`` bounds the cache of unconditional (zero-reference) features kept across calls;
    0 disables it. Call :meth:`clear_cache` after changing the model's weights.
    """

    def __init__(self, model: LeffaModel, *, uncond_cache_bytes: int = _DEFAULT_CACHE_BYTES) -> None:
        self.model = model
        self.uncond_cache_bytes = uncond_cache_bytes
        self._uncond_cache: dict[tuple, dict[str, torch.Tensor]] = {}
        self._cache_used = 0
        self._cache_lock = threading.Lock()

    @property
    def default_densepose_format(self) -> DensePoseFormat:
        """Pose transfer (SDXL base) takes IUV maps; the try-on models take RGB renders."""
        return "iuv" if self.model.base == "sdxl-inpainting" else "rgb"

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._uncond_cache.clear()
            self._cache_used = 0

    # ------------------------------------------------------------------------------------ inputs
    def _to_batch(self, value, name: str, kind: str, size, fmt: DensePoseFormat) -> torch.Tensor:
        if isinstance(value, (Image.Image, np.ndarray)):
            value = [value]
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"{name}: empty list of images")
            convert = {
                "image": lambda v: image_to_tensor(v if isinstance(v, Image.Image) else Image.fromarray(v), size),
                "mask": lambda v: mask_to_tensor(v, size),
                "densepose": lambda v: densepose_to_tensor(v, size, fmt),
            }[kind]
            return torch.cat([convert(v) for v in value])
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor or PIL image(s), got {type(value).__name__}")
        return value

    def sample(
        self,
        src_image: ImageInput,
        ref_image: ImageInput,
        mask: ImageInput,
        densepose: ImageInput,
        settings: SamplingSettings,
        **options: Any,
    ) -> LeffaOutput:
        """:meth:`__call__` with the sampling controls of ``settings`` (what the app, the command line and
        batches pass on whole); ``options`` are ``__call__``'s others (``callback``, ``observer``,
        ``output_type``, ``height``/``width``, ...). ``settings.record_attention`` is for the caller (see
        :func:`leffa.inspect.trace.trace`), not the sampler. ``settings.memory`` naming a level puts the model
        at it first (:func:`leffa.core.memory.apply_memory_level`, on the device the model runs on); ``auto``
        leaves the model as it is (the app's model store resolves ``auto`` for the device's free memory)."""
        if settings.memory != "auto" and settings.memory != self.model.memory_level:
            apply_memory_level(self.model, settings.memory, self.model.device)
        return self(
            src_image, ref_image, mask, densepose,
            num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
            seed=settings.seed, ref_acceleration=settings.ref_acceleration, repaint=settings.repaint,
            num_images=settings.num_images, **options,
        )

    def prepare_inputs(
        self,
        src_image: ImageInput,
        ref_image: ImageInput,
        mask: ImageInput,
        densepose: ImageInput,
        *,
        height: int | None = None,
        width: int | None = None,
        densepose_format: DensePoseFormat | None = None,
    ) -> list[torch.Tensor]:
        """Validate and convert inputs to equal-batch CPU tensors (src, ref, mask, densepose).

        PIL images are resized to ``width``×``height`` (default: the src image's size).
        """
        fmt = densepose_format or self.default_densepose_format
        src, ref = src_image, ref_image
        size = (width, height) if height is not None and width is not None else None
        if size is None and isinstance(src, Image.Image):
            size = src.size
        src = self._to_batch(src, "src_image", "image", size, fmt)
        ref = self._to_batch(ref, "ref_image", "image", size or tuple(src.shape[-1:-3:-1]), fmt)
        mask = self._to_batch(mask, "mask", "mask", size or tuple(src.shape[-1:-3:-1]), fmt)
        densepose = self._to_batch(densepose, "densepose", "densepose", size or tuple(src.shape[-1:-3:-1]), fmt)
        expected = {"src_image": (src, 3), "ref_image": (ref, 3), "mask": (mask, 1), "densepose": (densepose, 3)}
        for name, (tensor, channels) in expected.items():
            if not tensor.is_floating_point():
                raise TypeError(f"{name}: expected a floating point tensor, got {tensor.dtype}")
            if tensor.ndim != 4 or tensor.shape[1] != channels:
                raise ValueError(
                    f"{name}: expected shape (batch, {channels}, height, width), got {tuple(tensor.shape)}"
                )
            check_finite(tensor, name)
        h, w = src.shape[-2:]
        self._check_trained_size(h, w)
        factor = self.model.vae_scale_factor
        if h % factor or w % factor:
            raise ValueError(
                f"image size {w}x{h} must be a multiple of {factor} in both sides; letterbox or resize first "
                "(leffa.core.transforms.letterbox)"
            )
        batch = src.shape[0]
        for name, (tensor, _) in expected.items():
            if tuple(tensor.shape[-2:]) != (h, w):
                raise ValueError(f"{name}: size {tuple(tensor.shape[-2:])} differs from src_image size {(h, w)}")
            if tensor.shape[0] not in (1, batch):
                raise ValueError(f"{name}: batch {tensor.shape[0]} does not match src_image batch {batch}")
        if mask.min() < 0 or mask.max() > 1:
            raise ValueError("mask: values must be in [0, 1] (1 = region to generate)")
        for name in ("src_image", "ref_image"):
            tensor = expected[name][0]
            if tensor.min() < -1.001 or tensor.max() > 1.001:
                raise ValueError(f"{name}: values must be in [-1, 1] (use leffa.core.transforms.image_to_tensor)")
        mask = (mask >= 0.5).to(src.dtype)
        return [t.expand(batch, -1, -1, -1) for t in (src, ref, mask, densepose)]

    def _check_trained_size(self, height: int, width: int) -> None:
        """A model that knows its training size (the demo models) gives noise at others, slowly: refuse."""
        trained = self.model.trained_size
        if trained is None or (height, width) == tuple(trained):
            return
        th, tw = trained
        raise ValueError(
            f"this model was trained at {tw}x{th} pixels (width x height, its metadata.json) and gives noise at "
            f"{width}x{height}: letterbox the images to its size, leffa.core.transforms.letterbox(image, "
            f"size=({tw}, {th})), or pass height={th}, width={tw} (set model.trained_size = None to run anyway)"
        )

    # ---------------------------------------------------------------------------------- features
    def _uncond_features(self, batch: int, latent_hw: tuple[int, int], timestep: torch.Tensor):
        model = self.model
        key = (latent_hw, int(timestep), model.dtype, str(model.device))
        features = self._uncond_cache.get(key)
        if features is None:
            zeros = torch.zeros(1, 4, *latent_hw, device=model.device, dtype=model.dtype)
            features = model.reference_features(zeros, timestep)
            size = sum(t.numel() * t.element_size() for t in features.values())
            with self._cache_lock:
                if key not in self._uncond_cache and self._cache_used + size <= self.uncond_cache_bytes:
                    self._uncond_cache[key] = features
                    self._cache_used += size
        return {name: t.expand(batch, -1, -1) for name, t in features.items()}

    def _features(self, ref_latents: torch.Tensor, timestep: torch.Tensor, cfg: bool):
        cond = self.model.reference_features(ref_latents, timestep)
        if not cfg:
            return cond
        uncond = self._uncond_features(ref_latents.shape[0], tuple(ref_latents.shape[-2:]), timestep)
        return {name: torch.cat([uncond[name], cond[name]]) for name in cond}

    # ------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        src_image: ImageInput,
        ref_image: ImageInput,
        mask: ImageInput,
        densepose: ImageInput,
        num_inference_steps: int = 50,
        guidance_scale: float = 2.5,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        ref_acceleration: bool = False,
        repaint: bool = False,
        output_type: OutputType = "pil",
        *,
        guidance_rescale: float | None = None,
        seed: int | None = None,
        height: int | None = None,
        width: int | None = None,
        densepose_format: DensePoseFormat | None = None,
        callback: StepCallback | None = None,
        observer: AttentionObserver | None = None,
        num_images: int = 1,
    ) -> LeffaOutput:
        """Generate images. Tensor inputs use the released normalisation; PIL inputs are converted.

        ``num_images`` (1 to 4) makes that many images of one input in one batched pass, seeded ``seed``,
        ``seed + 1``, ...: image i is the image a run of its own with seed ``seed + i`` makes.

        ``generator`` (or else ``seed``; ``-1``/``None`` = random) drives the initial noise, VAE posterior
        samples and DDPM noise, so equal seeds give equal images on one device. ``guidance_rescale`` defaults
        to ``guidance_scale`` as released; 0 disables it. ``observer`` (e.g.
        :func:`leffa.core.recording.record_attention`) sees the attention of every step, keyed by timestep.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        model = self.model
        check_sampling_settings(num_inference_steps, guidance_scale, guidance_rescale, model.scheduler_config)
        check_num_images(num_images)
        src, ref, mask_t, dense = self.prepare_inputs(
            src_image, ref_image, mask, densepose, height=height, width=width, densepose_format=densepose_format
        )
        if num_images > 1:
            if src.shape[0] != 1:
                raise ValueError(f"num_images={num_images} makes several images of one input; got a batch of {src.shape[0]}")
            if generator is not None:
                raise ValueError("num_images > 1 seeds each image itself (seed, seed + 1, ...): pass seed, not generator")
            src, ref, mask_t, dense = (t.expand(num_images, -1, -1, -1) for t in (src, ref, mask_t, dense))
        if generator is None:
            seed = resolve_seed(seed)
            seeds = [seed + index for index in range(num_images)]
            check_seed(seeds[-1])
            generators = [torch.Generator().manual_seed(each) for each in seeds]
            generator = generators[0] if num_images == 1 else generators
        else:
            seeds = [generator.initial_seed()]
        with model.running():
            images, timesteps = self._denoise(
                src, ref, mask_t, dense, generator, num_inference_steps, guidance_scale, guidance_rescale,
                latents, ref_acceleration, callback, observer,
            )
        if repaint:
            images = repaint_images(src.to(images.device).float(), images, mask_t.to(images.device))
        return LeffaOutput(self._format(images, output_type), seeds[0], [int(t) for t in timesteps], seeds)

    def _denoise(
        self, src, ref, mask_t, dense, generator, num_inference_steps, guidance_scale, guidance_rescale, latents,
        ref_acceleration, callback, observer,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampling loop; images in [-1, 1] (float32) and the timesteps it took. ``generator`` is one
        generator or one per image (each image's draws then equal a run of its own)."""
        model = self.model
        device = model.device
        batch, _, h, w = src.shape
        latent_hw = (h // model.vae_scale_factor, w // model.vae_scale_factor)
        shape = (batch, 4, *latent_hw)
        if latents is None:
            latents = _initial_noise(shape, generator)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents: expected shape {shape}, got {tuple(latents.shape)}")
        else:
            check_finite(latents, "latents")
        scheduler = model.make_scheduler()
        scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents.to(device, torch.float32) * scheduler.init_noise_sigma

        src, ref, mask_t, dense = (t.to(device) for t in (src, ref, mask_t, dense))
        masked_latents = model.encode_image(src * (mask_t < 0.5), generator)
        ref_latents = model.encode_image(ref, generator)
        encoding_done(model)
        mask_latent = F.interpolate(mask_t, size=latent_hw, mode="nearest").to(model.dtype)
        dense_latent = F.interpolate(dense, size=latent_hw, mode="nearest").to(model.dtype)
        cfg = guidance_scale > 1.0
        copies = 2 if cfg else 1
        static = [x.repeat(copies, 1, 1, 1) for x in (mask_latent, masked_latents, dense_latent)]
        rescale = guidance_scale if guidance_rescale is None else guidance_rescale

        timesteps = scheduler.timesteps
        features = None
        if ref_acceleration:
            features = self._features(ref_latents, timesteps[num_inference_steps // 2], cfg)
        for index, t in enumerate(timesteps):
            if not ref_acceleration:
                features = self._features(ref_latents, t, cfg)
            model_input = scheduler.scale_model_input(torch.cat([latents] * copies), t)
            noise = model.predict_noise(
                model_input, *static, t, features, observer=observer, sampler_timestep=int(t)
            ).float()
            if cfg:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
                if rescale > 0:
                    noise = rescale_noise_cfg(noise, cond, rescale)
            latents = scheduler.step(noise, t, latents, generator=generator).prev_sample
            if callback is not None:
                callback(index + 1, num_inference_steps, int(t))

        images = model.decode_latents(latents)
        check_generated(images, model.dtype)
        return images.clamp(-1, 1), timesteps

    @staticmethod
    def _format(images: torch.Tensor, output_type: OutputType):
        if output_type == "pt":
            return (images / 2 + 0.5).clamp(0, 1)
        array = tensor_to_uint8(images)
        if output_type == "np":
            return array
        return [Image.fromarray(a) for a in array]
