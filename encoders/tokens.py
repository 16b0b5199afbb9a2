"""all-MiniLM-L6-v2's tokenizer (its tokenizer.json through ``tokenizers``), without torch:
the torch forward pass (``encoders.minilm``) and the ONNX Runtime one share it."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]


class SentenceTokenizer:
    """Token ids and attention masks padded to the longest text of a batch (not to the 128
    tokens tokenizer.json pads to), truncated at ``max_length``. Thread-safe."""

    def __init__(self, tokenizer_json: Path, max_length: int = 128) -> None:
        from tokenizers import Tokenizer

        self._tokenizer: Any = Tokenizer.from_file(str(tokenizer_json))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)
        self._lock = threading.Lock()  # tokenizers' objects are not shareable across threads

    def token_ids(self, texts: Sequence[str]) -> tuple[I64, I64]:
        """[n, longest] token ids and attention mask (int64), padded with 0 on the right."""
        with self._lock:
            encodings = self._tokenizer.encode_batch(list(texts))
        longest = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), longest), dtype=np.int64)
        mask = np.zeros((len(encodings), longest), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        return ids, mask
