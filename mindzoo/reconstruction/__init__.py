"""Image reconstruction: diffusion backends that turn predicted features into images.

Backends are registered here by name and imported lazily (diffusers is heavy); see
:mod:`mindzoo.reconstruction.base` for the interface.
"""

from mindzoo.reconstruction.base import (
    GenerationSettings,
    ReconstructionBackend,
    list_backends,
    load_backend,
    register_backend,
)

register_backend(
    "embedded",
    "Small conditional diffusion model trained on the store's training images (offline, CPU)",
    "mindzoo.reconstruction.embedded",
    "load_embedded",
)
register_backend(
    "sd-image-variations",
    "Stable Diffusion image variations (CLIP image embeddings) from a local pipeline directory",
    "mindzoo.reconstruction.pretrained.sd_image_variations",
    "load_sd_image_variations",
)
register_backend(
    "sd-unclip",
    "Stable unCLIP img2img (CLIP image embeddings + low-level init) from a local directory",
    "mindzoo.reconstruction.pretrained.sd_unclip",
    "load_sd_unclip",
)
register_backend(
    "versatile-diffusion",
    "Versatile Diffusion dual-guided, if the installed diffusers still provides it",
    "mindzoo.reconstruction.pretrained.versatile_diffusion",
    "load_versatile_diffusion",
)

__all__ = [
    "GenerationSettings",
    "ReconstructionBackend",
    "list_backends",
    "load_backend",
    "register_backend",
]
