"""Adaptation machinery used by the methods (workers/methods/): encoder adapters, decoder updates, the weight
prior, payload coding, training loops and their resumable state."""
