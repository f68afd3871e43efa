"""Standard base codecs (x264, x265 through PyAV): encoder settings, Annex B streams, decoding."""
