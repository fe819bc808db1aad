"""VIDM: latent video-inpainting diffusion for hand removal in egocentric video."""
