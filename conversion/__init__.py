"""ANN -> SNN conversion: threshold-balanced IF conversion of MLPs/CNNs (``conversion.threshold``), QCFS-trained
ANNs (``quant.qcfs``), and spike-friendly transformers with multi-level signed neurons and expectation
compensation (``conversion.transformer``); SpikingJelly's converter as the peer (``conversion.peer``)."""

from conversion.threshold import (ConversionConfig, NormMethod, UnsupportedLayerError, activation_scales, check_convertible,
                                  convert_sequential, sequential_of)

__all__ = ["ConversionConfig", "NormMethod", "UnsupportedLayerError", "activation_scales", "check_convertible",
           "convert_sequential", "sequential_of"]
