"""The site's data, read once per process when the process lives for many tasks.

A fresh ``flwr-clientapp`` process (and the simulation engine's actors, which switch
between sites) reads the site's data for each message: :func:`load_site` passes straight
through. The long-lived site worker (:mod:`client.worker`) calls :func:`enable` and then
keeps the last few loaded sites, keyed by the node config and the run config, so later
rounds of a run (and later runs with the same settings) skip the read. Data changed on
disk is seen after the site restarts.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from common.config import RunConfig

if TYPE_CHECKING:
    from client.site import Site

# A site worker serves one SuperNode: one run at a time, rarely two configurations.
MAX_SITES = 2

_enabled = False
_sites: OrderedDict[str, Site] = OrderedDict()
_lock = threading.Lock()


def enable(on: bool = True) -> None:
    """Keep loaded sites in this process (the site worker), or stop and forget them."""
    global _enabled
    with _lock:
        _enabled = on
        if not on:
            _sites.clear()


def cached_sites() -> int:
    """How many loaded sites this process keeps."""
    return len(_sites)


def _key(node_config: dict[str, Any], cfg: RunConfig) -> str:
    return json.dumps([node_config, cfg.to_dict()], sort_keys=True, default=str)


def load_site(node_config: dict[str, Any], cfg: RunConfig) -> Site:
    """:func:`client.site.load_site`, answered from memory when enabled and seen before."""
    from client import site as site_module

    if not _enabled:
        return site_module.load_site(node_config, cfg)
    key = _key(node_config, cfg)
    with _lock:
        if key in _sites:
            _sites.move_to_end(key)
            return replace(_sites[key])  # a handler may rebind fields, not the cached one's
    site = site_module.load_site(node_config, cfg)
    with _lock:
        _sites[key] = site
        while len(_sites) > MAX_SITES:
            _sites.popitem(last=False)
    return replace(site)
