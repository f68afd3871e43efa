"""Base codecs behind one interface (base.py): SSF (ssf.py) and x264/x265 (standard.py)."""

from workers.codecs.base import (CODECS, BaseCodec, Encoded, codec_class, codec_for_path, codec_names, load_codec,
                                 register_codec)

__all__ = ["CODECS", "BaseCodec", "Encoded", "codec_class", "codec_for_path", "codec_names", "load_codec",
           "register_codec"]
