"""The scale-space-flow (SSF) base codec in plain torch, with CompressAI-compatible module names."""
