"""piccolo-embed inside RAG frameworks: LangChain and LlamaIndex embeddings, over a local model or a server.

Import the submodule of the framework you use; each needs its extra, and importing this package imports neither:

- :mod:`piccolo_embed.integrations.langchain` (``pip install "piccolo-embed[langchain]"``): ``PiccoloEmbeddings``
- :mod:`piccolo_embed.integrations.llamaindex` (``pip install "piccolo-embed[llamaindex]"``): ``PiccoloEmbedding``
- :mod:`piccolo_embed.integrations.remote`: ``RemoteEncoder``, a running server as an ``Encoder``

Both classes give queries the query role and documents the passage role, so each gets its instruction.
"""
