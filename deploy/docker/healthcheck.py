"""Container health check: exit 0 when the server in this container answers GET /healthz.

Slim images carry no curl, so the images' HEALTHCHECK runs this with the image's own Python. It
asks the port the server listens on (``PMMTALK_PORT``, default 8000) on the loopback address.
Exit status 1 (unhealthy) on any failure, with the reason on stderr, where ``docker inspect``
shows it.
"""

from __future__ import annotations

import os
import sys
import urllib.request

TIMEOUT_S = 4.0
"""Below the images' HEALTHCHECK --timeout (5 s): the reason gets printed before Docker kills us."""


def main() -> int:
    port = os.environ.get("PMMTALK_PORT", "8000")
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            status = int(response.status)
    except OSError as exc:  # refused, timed out, or an HTTP error status
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
