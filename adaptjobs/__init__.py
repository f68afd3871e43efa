"""adaptjobs: per-video online adaptation jobs for neural video compression (the driver side: CLI,
scheduling, run directories, reports). Per-video work lives in the `workers` package."""

__version__ = "0.1.0"
