"""The learned post-filter that runs on decoded x264/x265 frames (CAVC's post-adapter, JVET's NNPF)."""
