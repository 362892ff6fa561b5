"""piccolo-embed: train, evaluate and serve Chinese text embedders (a re-creation of piccolo-large-zh).

:class:`Embedder` and :class:`Encoder` load on first use, so ``piccolo-embed --help`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from piccolo_embed.lazy import lazy_exports
from piccolo_embed.types import Role, RolePreset, RoleSpec

if TYPE_CHECKING:
    from piccolo_embed.inference.embedder import Embedder
    from piccolo_embed.protocols import Encoder

__version__ = "0.1.0"

__all__ = ["Embedder", "Encoder", "Role", "RolePreset", "RoleSpec", "__version__"]

__getattr__ = lazy_exports(
    __name__, {"Embedder": "piccolo_embed.inference.embedder", "Encoder": "piccolo_embed.protocols"}
)
