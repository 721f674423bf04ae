"""Model zoo: hand-written, forkable backbones and their shared layers."""
