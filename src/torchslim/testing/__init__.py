"""Testing helpers: a registry of tiny reference architectures and the architecture x technique matrix.

:mod:`torchslim.testing.architectures` builds small, seeded, deterministic models of the kinds users bring
(Hugging Face BERT/GPT-2/Llama/ViT, ``nn.MultiheadAttention``, concatenated and gated branches, tied weights,
recurrent text models, MobileNetV3 blocks, PyTorch's own ``nn.TransformerEncoder``, a
``weight_norm`` layer, every zoo model); :mod:`torchslim.testing.matrix` runs every
technique on each of them and says, per cell, whether it works (and the figure that proves it), refuses
naming a layer (the model left bit-identical), or fails.

Example:
    >>> from torchslim.testing import ARCHITECTURES
    >>> arch = ARCHITECTURES["glu"]()
    >>> arch.kind, tuple(arch.model(arch.example).shape)
    ('vision', (4, 10))
"""

from torchslim.testing.architectures import ARCHITECTURES, Architecture, call

__all__ = ["ARCHITECTURES", "Architecture", "call"]
