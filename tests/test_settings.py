from __future__ import annotations

import pytest

from service.settings import DEV_SECRET, ConfigError, Settings


def test_defaults_are_sqlite_and_development() -> None:
    settings = Settings.from_env({})
    assert settings.is_sqlite
    assert settings.environment == "development"


def test_values_are_decoded_from_strings() -> None:
    settings = Settings.from_env({"VOUCHERS_SMTP_PORT": "2525", "VOUCHERS_BACKGROUND_TASKS": "false"})
    assert settings.smtp_port == 2525
    assert settings.background_tasks is False


def test_a_wrong_value_names_its_variable() -> None:
    with pytest.raises(ConfigError, match="VOUCHERS_SMTP_PORT"):
        Settings.from_env({"VOUCHERS_SMTP_PORT": "not-a-port"})


def test_production_refuses_the_development_secret() -> None:
    with pytest.raises(ConfigError, match="VOUCHERS_SECRET_KEY"):
        Settings.from_env({"VOUCHERS_ENVIRONMENT": "production"})
    assert Settings.from_env({"VOUCHERS_ENVIRONMENT": "production", "VOUCHERS_SECRET_KEY": "s" * 40}).secret_key != DEV_SECRET


def test_unknown_database_is_refused() -> None:
    with pytest.raises(ConfigError, match="VOUCHERS_DATABASE_URL"):
        Settings.from_env({"VOUCHERS_DATABASE_URL": "mysql://x"})


def test_keys_differ_per_purpose() -> None:
    settings = Settings.from_env({})
    assert settings.derive_key("a") != settings.derive_key("b")
    assert len(settings.derive_key("session")) == 32
