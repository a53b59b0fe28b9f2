"""Reloading keyrelay.yaml in a running process: read and check the file, then swap what routing reads.

``keyrelay serve`` reloads on ``SIGHUP`` (``keyrelay reload`` sends it). What is reloaded: the providers
(the route table, their credentials from the environment as it was when the process started) and the
routing settings (``RELOADED``). Every other setting needs a restart; a change to one is logged as a
WARNING and left as it was. A file that does not load, or whose providers cannot be reached as
configured (an unusable CA file or proxy), is refused: the error is logged and the running
configuration stays. The swap is one assignment on the event loop, so a request uses either the old
table or the new one, never a mix; requests in flight finish on the channels they started with.
"""

from __future__ import annotations

import logging

from keyrelay.config import ConfigError, Settings, load_settings

log = logging.getLogger("keyrelay.reload")

RELOADED = (
    "providers",
    "max_attempts",
    "total_timeout_s",
    "breaker_failures",
    "breaker_window_s",
    "breaker_cooldown_s",
    "breaker_max_cooldown_s",
)


def reloaded_settings(current: Settings) -> Settings:
    """``current`` with the reloadable settings read again from its file and the environment.

    Raises:
        ConfigError: No file to reload, or it is invalid (the message says where).
    """
    if current.config is None:
        raise ConfigError("no keyrelay.yaml to reload: the server was started without --config or KEYRELAY_CONFIG")
    fresh = load_settings(current.config)
    ignored = [
        name
        for name in Settings.model_fields
        if name not in RELOADED and name != "config" and getattr(fresh, name) != getattr(current, name)
    ]
    if ignored:
        log.warning("reload: %s changed but apply only at the next restart", ", ".join(sorted(ignored)))
    return current.model_copy(update={name: getattr(fresh, name) for name in RELOADED})
