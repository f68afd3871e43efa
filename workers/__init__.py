"""Everything that runs for ONE video: video I/O, the base codec, entropy coding, bitstream formats,
metrics. No Ray imports here: the runner only schedules, the workers do the codec work."""
