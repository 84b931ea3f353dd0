"""Settings of the SMS gateway, read from the environment."""

from config.settings import API_STYLES, Settings, SettingsError, load_settings

__all__ = ["API_STYLES", "Settings", "SettingsError", "load_settings"]
