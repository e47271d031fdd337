"""Encoding: weight sharing (k-means), and saving a model as a ``.tslim`` file (:mod:`torchslim.io.tslim`).

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

from torchslim.encode import container, huffman, streams  # noqa: F401 - moved to torchslim.io.tslim; kept importable
from torchslim.encode.kmeans import SHARE, ShareConfig, kmeans_1d, share_weights_
from torchslim.encode.tslim import save
from torchslim.io.tslim import HuffmanCode, HuffmanError, TslimFile, TslimFormatError, layer_table, load, read

__all__ = [
    "HuffmanCode",
    "HuffmanError",
    "SHARE",
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
