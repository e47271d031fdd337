"""Encoding: weight sharing (k-means), Huffman coding, the ``.tslim`` container.

Example:
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> model = ts.create_model("lenet300")
    >>> report = ts.share_weights_(model, {"bits": 5})
    >>> path = ts.save(model, f"{tmp.name}/model.tslim", arch="zoo:lenet300")
    >>> restored = ts.load(path)
    >>> x = torch.randn(2, 784)
    >>> torch.equal(restored(x), model.eval()(x))
    True
    >>> tmp.cleanup()
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
