"""piccolo-embed: train, evaluate and serve Chinese text embedders (a re-creation of piccolo-large-zh)."""

from piccolo_embed.inference.embedder import Embedder
from piccolo_embed.protocols import Encoder
from piccolo_embed.types import Role, RolePreset, RoleSpec

__version__ = "0.1.0"

__all__ = ["Embedder", "Encoder", "Role", "RolePreset", "RoleSpec", "__version__"]
