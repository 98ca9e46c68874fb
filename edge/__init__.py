"""Privacy-first edge camera firmware.

The detection path (camera -> inference -> decode -> pose -> publish) lives in
this package's top-level modules; identification lives in `edge.identify`,
which the detection path never imports.
"""

__version__ = "0.1.0"
