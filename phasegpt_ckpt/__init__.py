"""phasegpt-ckpt: get PhaseGPT checkpoints from their mirrors, prove the bytes, prove the claims."""
__version__ = "0.1.0"
