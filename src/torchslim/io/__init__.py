"""Files: atomic writes, the safetensors + JSON sidecar bundle, checkpoints and the ``.tslim`` container.

Nothing here imports a technique package; nothing here unpickles.
"""

from torchslim.io.atomic import atomic_write_bytes, atomic_write_text
from torchslim.io.bundle import bundle_paths, read_bundle, write_bundle

__all__ = ["atomic_write_bytes", "atomic_write_text", "bundle_paths", "read_bundle", "write_bundle"]
