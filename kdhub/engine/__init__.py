"""The generic distillation loop and what it needs: feature taps, data on the device, checkpoints."""
