"""The registry server: an aiohttp application speaking the OCI Distribution Spec v1.1."""

from .app import make_app
from .config import ConfigError, ServerConfig, load_config

__all__ = ["ConfigError", "ServerConfig", "load_config", "make_app"]
