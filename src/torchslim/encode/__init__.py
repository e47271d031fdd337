"""Encoding: weight sharing (k-means), Huffman coding, the ``.tslim`` container.

Example:
    >>> ts.share_weights_(model, {"bits": 5})
    >>> ts.save(model, "model.tslim", arch="zoo:lenet300")
    >>> ts.load("model.tslim")
"""

from torchslim.encode.container import TslimFile, TslimFormatError, layer_table, load, read, save
from torchslim.encode.huffman import HuffmanCode, HuffmanError
from torchslim.encode.kmeans import ShareConfig, kmeans_1d, share_weights_

__all__ = [
    "HuffmanCode",
    "HuffmanError",
    "ShareConfig",
    "TslimFile",
    "TslimFormatError",
    "kmeans_1d",
    "layer_table",
    "load",
    "read",
    "save",
    "share_weights_",
]
