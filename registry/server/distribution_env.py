"""CNCF Distribution's ``REGISTRY_*`` environment variables, laid over its ``config.yml``.

Distribution reads ``REGISTRY_<SECTION>_<KEY>...`` over the file it was given
(``REGISTRY_HTTP_ADDR`` is ``http.addr``, ``REGISTRY_STORAGE_DELETE_ENABLED`` is
``storage.delete.enabled``): the name without the prefix, split at ``_`` and lowercased,
is the key's path, and the value is read as YAML (``true`` is a boolean, ``[a, b]`` a
list). Variables are applied in name order, so ``REGISTRY_AUTH=htpasswd`` (which makes
``auth`` hold ``htpasswd`` alone, as a driver name does in Distribution) comes before
``REGISTRY_AUTH_HTPASSWD_PATH``. A variable whose first part is no section of the file
format is left alone, as Distribution leaves it (with a warning); every other one is
then read as if the file said it, so a key pybuild refuses is refused from the
environment too, and the error names the variable.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping
from typing import Any

import yaml

__all__ = ["apply_registry_env"]

log = logging.getLogger(__name__)

_PREFIX = "REGISTRY_"
# The file format's sections (Distribution's, and GitLab's ``database``).
_SECTIONS = {"version", "log", "loglevel", "storage", "auth", "middleware", "reporting", "http",
             "notifications", "redis", "health", "proxy", "compatibility", "validation",
             "policy", "catalog", "database"}
# Sections that name one driver: a scalar value picks it (``REGISTRY_AUTH=htpasswd``).
_DRIVER_SECTIONS = {"storage", "auth"}
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def _value(text: str) -> Any:
    """The variable's value as Distribution reads it: YAML, but a text such as ``5:00``
    stays text (YAML 1.1 would read it as a base-60 number; Go's YAML does not)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, int | float) and not isinstance(value, bool) and \
            not _NUMBER.fullmatch(text.strip()):
        return text
    return value


def apply_registry_env(doc: Mapping[str, Any], environ: Mapping[str, str]
                       ) -> tuple[dict[str, Any], dict[str, str]]:
    """``doc`` with the ``REGISTRY_*`` variables of ``environ`` applied, and which
    variable set each key it changed (dotted key -> variable name), for errors."""
    out: dict[str, Any] = copy.deepcopy(dict(doc))
    origins: dict[str, str] = {}
    for name in sorted(k for k in environ if k.startswith(_PREFIX) and len(k) > len(_PREFIX)):
        path = name[len(_PREFIX):].lower().split("_")
        if path[0] not in _SECTIONS or not all(path):
            log.warning("ignoring environment variable %s: no such configuration key", name)
            continue
        if not environ[name].strip():
            continue  # an empty YAML document changes nothing in Distribution either
        value = _value(environ[name])
        if len(path) == 1 and path[0] in _DRIVER_SECTIONS and isinstance(value, str):
            value = {value: {}}
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {} if not isinstance(child, Mapping) else dict(child)
            node = child
        node[path[-1]] = value
        origins[".".join(path)] = name
    return out, origins
