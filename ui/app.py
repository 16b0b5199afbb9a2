"""fashion-search for shoppers: `fashion-search ui` (or `streamlit run ui/app.py`).

The API it talks to comes from the environment variable FASHION_SEARCH_API_URL (default
http://127.0.0.1:8000). The page itself lives in ui/shop.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from ui.shop import main
except ModuleNotFoundError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ui.shop import main

main()
