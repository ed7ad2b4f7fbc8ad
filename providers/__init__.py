"""Provider adapters: one module per wire protocol; `base` holds the contract."""

import sys
import types

# httpx imports its command-line client (`httpx._main`, with rich, pygments and click)
# whenever those are installed, and this project installs rich: ~50 ms at the first
# request and ~7,000 objects that every full garbage collection then walks, for a CLI we
# never run. With this placeholder httpx's own fallback applies (its `httpx` command then
# says the CLI is unavailable, in a process that loaded us first).
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", types.ModuleType("httpx._main"))
