"""A readable summary of a User-Agent header ("Firefox 121 on macOS"), for the sessions a person sees.

Only a summary a person recognises their device by: the browser family and major version and the operating
system, from the few tokens that name them. Nothing decides anything on it (a User-Agent is whatever the
client says), so a small table is enough and a full device database is not worth its size.
"""

from __future__ import annotations

import re

UNKNOWN = "Unknown device"
MAX_SUMMARY = 80

# (pattern, name) in order: the first match wins (Edge and Opera also say "Chrome", Chrome also "Safari")
_BROWSERS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), n)
    for p, n in (
        (r"Edg(?:e|A|iOS)?/(\d+)", "Edge"),
        (r"OPR/(\d+)", "Opera"),
        (r"SamsungBrowser/(\d+)", "Samsung Internet"),
        (r"Firefox/(\d+)", "Firefox"),
        (r"FxiOS/(\d+)", "Firefox"),
        (r"CriOS/(\d+)", "Chrome"),
        (r"Chrome/(\d+)", "Chrome"),
        (r"Version/(\d+)[.\d]* (?:Mobile/\S+ )?Safari/", "Safari"),
        (r"^curl/(\d+)", "curl"),
        (r"^python-httpx/(\d+)", "python-httpx"),
        (r"^python-requests/(\d+)", "python-requests"),
        (r"^PostmanRuntime/(\d+)", "Postman"),
    )
)
_SYSTEMS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), n)
    for p, n in (
        (r"iPhone", "iPhone"),
        (r"iPad", "iPad"),
        (r"Android", "Android"),
        (r"CrOS", "ChromeOS"),
        (r"Windows", "Windows"),
        (r"Mac OS X|Macintosh", "macOS"),
        (r"Linux", "Linux"),
    )
)


def describe(user_agent: str | None) -> str:
    """`<browser> <major> on <system>`, what of it is known, or "Unknown device"."""
    if not user_agent:
        return UNKNOWN
    browser = next(
        (f"{name} {m.group(1)}" for pattern, name in _BROWSERS if (m := pattern.search(user_agent))),
        None,
    )
    system = next((name for pattern, name in _SYSTEMS if pattern.search(user_agent)), None)
    if browser and system:
        return f"{browser} on {system}"
    if browser or system:
        return str(browser or system)
    # an unknown client: its product token, as it names itself
    product = user_agent.split(" ", 1)[0].split("/", 1)[0]
    return product[:MAX_SUMMARY] if product.isprintable() and product else UNKNOWN
