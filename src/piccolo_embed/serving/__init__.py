"""HTTP embedding server: OpenAI-compatible and native APIs over one dynamically batched model worker.

Install the ``server`` extra (fastapi, uvicorn) to use it; importing :mod:`piccolo_embed` never imports this.
"""

from piccolo_embed.serving.settings import ServerSettings

__all__ = ["ServerSettings"]
