"""Keep API keys out of everything emkit writes.

Error messages from providers sometimes quote the key they were given; before such a
message reaches the store, a log line or the report, every secret-looking environment
value is replaced by a marker.
"""

from __future__ import annotations

import os
import re

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.IGNORECASE)
MIN_SECRET_LENGTH = 8  # shorter values are too likely to occur in ordinary text


def secret_values() -> list[str]:
    return sorted(
        (value for name, value in os.environ.items() if _SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH),
        key=len,
        reverse=True,
    )


def redact(text: str) -> str:
    for value in secret_values():
        if value in text:
            text = text.replace(value, "[redacted]")
    return text
