"""The PMMTalk network: components, presets, losses, metrics and checkpoints."""
