"""ANN -> SNN conversion."""

from conversion.threshold import ConversionConfig, NormMethod, UnsupportedLayerError, check_convertible, convert_mlp

__all__ = ["ConversionConfig", "NormMethod", "UnsupportedLayerError", "check_convertible", "convert_mlp"]
