"""Configuration: every setting named once, typed readers, and loading
defaults < YAML < environment.

The package's face: `load`, its error, and the model it builds (gateproxy/core/model.py).
"""

from gateproxy.config.loader import (
    CONFIG_ENV,
    DEFAULTS_SOURCE,
    Config,
    ConfigError,
    Dependency,
    GatedRoute,
    effective,
    load,
    redact_url,
)

__all__ = ["CONFIG_ENV", "DEFAULTS_SOURCE", "Config", "ConfigError", "Dependency",
           "GatedRoute", "effective", "load", "redact_url"]
