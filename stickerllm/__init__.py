"""StickerLLM: a frozen LLM that learns `<ret> </ret> <img> </img> <pret>` to retrieve stickers.

- `tokens.py`: the special tokens and their ids in the LLM's tokenizer (shared, never modified);
- `prompt.py`: conversations -> token sequences in the LLM's chat format (user text never special);
- `model.py`: `StickerLLM` (frozen LLM + new rows, W_t, W_c), `create`, `load`, adapter save;
- `chat.py`: `StickerChat.chat_stream` (streaming events, retrieval at `<ret>`), decoders.
"""
