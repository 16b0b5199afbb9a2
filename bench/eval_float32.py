"""``fashion-search eval`` with fashion-lite's float32 heads (the ONNX export's reference)
on the runtime FASHION_SEARCH_ENCODER_RUNTIME chooses: what the int8 heads of either runtime
are measured against.

    FASHION_SEARCH_ENCODER_RUNTIME=torch PYTHONPATH=. .venv/bin/python -m bench.eval_float32 \
        eval -e fashion-lite -o FILE
"""

from __future__ import annotations

import sys
from typing import Any

import encoders.fashion_lite.encoder as fashion_lite
from fashion_search.cli import app

_init = fashion_lite.FashionLiteEncoder.__init__


def _float32_init(self: fashion_lite.FashionLiteEncoder, *args: Any, **kwargs: Any) -> None:
    kwargs["float32"] = True
    _init(self, *args, **kwargs)


if __name__ == "__main__":
    setattr(fashion_lite.FashionLiteEncoder, "__init__", _float32_init)  # noqa: B010
    app(sys.argv[1:])
