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


def test_sign_in_providers_are_checked() -> None:
    with pytest.raises(ConfigError, match="VOUCHERS_EHERKENNING_ISSUER must be an https"):
        Settings.from_env({"VOUCHERS_ENVIRONMENT": "production", "VOUCHERS_SECRET_KEY": "s" * 40,
                           "VOUCHERS_EHERKENNING_ISSUER": "http://broker.example", "VOUCHERS_EHERKENNING_CLIENT_SECRET": "x"})
    with pytest.raises(ConfigError, match="VOUCHERS_EHERKENNING_CLIENT_SECRET or"):
        Settings.from_env({"VOUCHERS_EHERKENNING_ISSUER": "https://broker.example"})
    with pytest.raises(ConfigError, match="VOUCHERS_EHERKENNING_PRIVATE_KEY_FILE"):
        Settings.from_env({"VOUCHERS_EHERKENNING_ISSUER": "https://broker.example",
                           "VOUCHERS_EHERKENNING_PRIVATE_KEY_FILE": "/nonexistent/key.pem"})
    with pytest.raises(ConfigError, match="VOUCHERS_STAFF_OIDC_ROLES must say"):
        Settings.from_env({"VOUCHERS_STAFF_OIDC_ISSUER": "https://login.example/tenant/v2.0",
                           "VOUCHERS_STAFF_OIDC_CLIENT_SECRET": "x"})
    with pytest.raises(ConfigError, match="'opperbaas' is not a staff role"):
        Settings.from_env({"VOUCHERS_STAFF_OIDC_ROLES": "a=opperbaas"})
    settings = Settings.from_env({"VOUCHERS_STAFF_OIDC_ISSUER": "https://login.example/tenant/v2.0",
                                  "VOUCHERS_STAFF_OIDC_CLIENT_SECRET": "x",
                                  "VOUCHERS_STAFF_OIDC_ROLES": "g1=beheerder, g2 = lezer"})
    assert settings.staff_roles() == [("g1", "beheerder"), ("g2", "lezer")]
