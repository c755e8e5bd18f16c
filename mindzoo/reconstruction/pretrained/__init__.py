"""Backends built from pretrained diffusers pipelines in a local directory (``--weights DIR``).

Each backend feeds *predicted* CLIP features straight into the pipeline's UNet (the pipeline's
own image encoder is bypassed), with the pipeline's classifier-free guidance. One module per
backend, each stating how it conditions the UNet:

- :mod:`~mindzoo.reconstruction.pretrained.sd_image_variations`: ``sd-image-variations``
  (StableDiffusionImageVariationPipeline);
- :mod:`~mindzoo.reconstruction.pretrained.sd_unclip`: ``sd-unclip`` (StableUnCLIPImg2ImgPipeline);
- :mod:`~mindzoo.reconstruction.pretrained.versatile_diffusion`: ``versatile-diffusion``
  (VersatileDiffusionDualGuidedPipeline);

and :mod:`~mindzoo.reconstruction.pretrained.common` for what they share (the DDIM sampler,
seeded batched generation, checking and loading a pipeline directory). The pipelines need
transformers, which comes with the ``clip`` extra (``pip install 'mindzoo[clip]'``).
"""
