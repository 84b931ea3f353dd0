"""Settings of the SMS gateway, read from the environment (the only package that reads it)."""

from config.settings import (
    API_STYLES,
    Settings,
    SettingsError,
    load_settings,
    load_some,
    metrics_directory,
    read_environment,
)

__all__ = ["API_STYLES", "Settings", "SettingsError", "load_settings", "load_some", "metrics_directory",
           "read_environment"]
