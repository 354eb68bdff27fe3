"""StickerLLM: a frozen LLM that learns retrieval tokens (see issue tracker; not built yet)."""
