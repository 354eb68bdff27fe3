"""StickerLLM: a frozen LLM that learns `<ret> </ret> <img> </img> <pret>` to retrieve stickers.

- `tokens.py`: the special tokens, added to a copy of the LLM's tokenizer (ids read back from it);
- `prompt.py`: conversations -> token sequences in the LLM's chat format (user text never special);
- `model.py`: `StickerLLM` (frozen LLM + new rows, W_t, W_c), `create`, `load`, adapter save;
- `chat.py`: `StickerChat.chat_stream` (streaming events, retrieval at `<ret>`), decoders.
"""
