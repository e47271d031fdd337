"""Files: atomic writes, the safetensors + JSON sidecar bundle, checkpoints and the ``.tslim`` container.

Nothing here imports a technique package; nothing here unpickles.
"""

from torchslim.io.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["atomic_write_bytes", "atomic_write_text"]
