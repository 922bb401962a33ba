"""The client's defaults and environment variables, apart so that the CLI can name them without
importing the client (numpy, httpx, websockets) when `pmmtalk` starts."""

from __future__ import annotations

from typing import Final

DEFAULT_URL: Final = "http://127.0.0.1:8000"
SERVER_URL_ENV: Final = "PMMTALK_SERVER_URL"
API_KEY_ENV: Final = "PMMTALK_API_KEY"
DEFAULT_CHUNK_MS: Final = 20.0
DEFAULT_RETRIES: Final = 3
DEFAULT_BACKOFF_S: Final = 0.5  # before the first retry; each later wait doubles
