"""Model definitions: StyleGAN2, backbones, encoders, latent discriminator."""
