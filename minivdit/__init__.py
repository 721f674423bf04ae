"""minivdit: a from-scratch, plain-PyTorch framework for training video diffusion transformers with
representation alignment to frozen vision encoders. See README.md and DESIGN.md."""

__version__ = "0.1.0"
