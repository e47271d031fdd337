"""The ``.tslim`` container: a compressed model in a versioned, checksummed file that is parsed, never unpickled.

- :mod:`~torchslim.io.tslim.format`: the binary layout, :func:`parse`, :class:`TslimFile`;
- :mod:`~torchslim.io.tslim.codecs`: the codec registry (``raw``, ``bits``, ``sparse``,
  ``shared``, ``support_of``, ``codes_of``; ``quantized`` comes from :mod:`torchslim.encode.tslim`);
- :mod:`~torchslim.io.tslim.policy`: which codec each state-dict entry gets;
- :mod:`~torchslim.io.tslim.model`: a model to and from a file (:func:`load_file`: every check of
  :func:`load`, shared with ``torchslim inspect``);
- :mod:`~torchslim.io.tslim.arch`: the architecture a file names, built bounded on the ``meta``
  device and checked against its records before anything is decoded;
- :mod:`~torchslim.io.tslim.inspect`: the per-layer table of ``torchslim inspect``;
- :mod:`~torchslim.io.tslim.streams` and :mod:`~torchslim.io.tslim.huffman`: integer streams
  (relative indices, fixed width, canonical Huffman codes).

Example:
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> model = ts.create_model("lenet300")
    >>> path = ts.save(model, f"{tmp.name}/lenet300.tslim", arch="zoo:lenet300")
    >>> restored = load(path)                              # builds zoo:lenet300
    >>> restored = load(path, lambda: ts.create_model("lenet300"))   # or a builder of your own model
    >>> read(path).arch
    {'args': {}, 'model': 'zoo:lenet300'}
    >>> tmp.cleanup()
"""

from torchslim.io.tslim.codecs import CODECS, Codec, register
from torchslim.io.tslim.format import FORMAT_VERSION, MAGIC, SUFFIX, TslimFile, TslimFormatError, parse, read
from torchslim.io.tslim.huffman import HuffmanCode, HuffmanError
from torchslim.io.tslim.inspect import LayerRow, layer_table
from torchslim.io.tslim.model import build_from_arch, encode_model, load, load_data, load_file, save

__all__ = [
    "CODECS",
    "FORMAT_VERSION",
    "MAGIC",
    "SUFFIX",
    "Codec",
    "HuffmanCode",
    "HuffmanError",
    "LayerRow",
    "TslimFile",
    "TslimFormatError",
    "build_from_arch",
    "encode_model",
    "layer_table",
    "load",
    "load_data",
    "load_file",
    "parse",
    "read",
    "register",
    "save",
]
