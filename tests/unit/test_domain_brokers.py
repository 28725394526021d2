"""A broker per domain, as configuration and as the processes read it: which broker a process
of a domain connects to, which beat entries it publishes, how the CLI reaches each domain."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest

from regionvault.config import Config, parse_config, shown_url
from regionvault.domains import Domain
from regionvault.errors import ConfigError
from regionvault.status import EXIT_CODES, Freshness, worst
from tests.unit import config_data

EU_BROKER = "redis://:s3cret@redis-eu:6379/0"
EU_BACKEND = "redis://:s3cret@redis-eu:6379/1"


def per_domain(**eu: Any) -> Config:
    """us and au on the shared broker, eu on its own."""
    data = config_data()
    data["broker_url"] = "redis://shared:6379/0"
    data["domains"]["eu"].update({"broker_url": EU_BROKER, **eu})
    return parse_config(data, origin="test", env={})


def test_a_domain_with_its_own_broker_keeps_its_results_there() -> None:
    config = per_domain()
    assert config.has_own_broker(Domain.EU) and not config.has_own_broker(Domain.US)
    assert config.broker_for(Domain.EU) == config.backend_for(Domain.EU) == EU_BROKER
    assert config.broker_for(Domain.US) == config.backend_for(Domain.US) == "redis://shared:6379/0"
    assert config.broker_for(None) == "redis://shared:6379/0"
    assert config.shared_broker_domains() == [Domain.US, Domain.AU]
    assert per_domain(result_backend=EU_BACKEND).backend_for(Domain.EU) == EU_BACKEND


def test_a_result_backend_without_its_own_broker_is_refused() -> None:
    data = config_data()
    data["domains"]["us"]["result_backend"] = "redis://elsewhere:6379/0"
    with pytest.raises(ConfigError, match="result_backend of a domain belongs with its own "
                                          "broker_url"):
        parse_config(data, origin="test", env={})


def test_per_domain_endpoints_must_be_https_outside_development() -> None:
    data = config_data()
    data["domains"]["au"]["s3_endpoint_url"] = "http://s3-au.internal"
    with pytest.raises(ConfigError, match=r"domains\.au\.s3_endpoint_url must be an https://"):
        parse_config(data, origin="test", env={})
    data["development"] = True
    config = parse_config(data, origin="test", env={})
    assert config.s3_endpoint_for(Domain.AU) == "http://s3-au.internal"
    assert config.s3_endpoint_for(Domain.US) is None


def test_a_broker_password_is_never_shown() -> None:
    assert shown_url(EU_BROKER) == "redis://:***@redis-eu:6379/0"
    assert shown_url("redis://shared:6379/0") == "redis://shared:6379/0"


def test_an_unreachable_domain_needs_someone() -> None:
    assert EXIT_CODES[worst([Freshness.FRESH, Freshness.UNREACHABLE])] == 4
    assert worst([Freshness.UNREACHABLE, Freshness.STUCK]) is Freshness.UNREACHABLE
    assert worst([Freshness.UNREACHABLE, Freshness.FAILING]) is Freshness.FAILING


# --- the processes ---------------------------------------------------------------------------


@pytest.fixture
def process_app() -> Iterator[Any]:
    """This process's Celery app, configured again as it was after the test."""
    module = importlib.import_module("workers.app")  # (``workers.app`` is also the app)
    saved = dict(module._STATE)
    try:
        yield module
    finally:
        module.configure(module.app, saved["config"], saved["domain"])


def test_a_process_of_a_domain_connects_to_its_broker_and_beats_its_entries(
        process_app: Any) -> None:
    config = per_domain(result_backend=EU_BACKEND)
    process_app.configure(process_app.app, config, Domain.EU)
    conf = process_app.app.conf
    assert (conf.broker_url, conf.result_backend) == (EU_BROKER, EU_BACKEND)
    assert conf.beat_schedule
    assert {name.rsplit("-", 1)[1] for name in conf.beat_schedule} == {"eu"}
    # a worker of eu reaches its own domain through its own app
    assert process_app.app_for(Domain.EU) is process_app.app


def test_a_shared_process_beats_only_the_domains_on_the_shared_broker(process_app: Any) -> None:
    config = per_domain()
    process_app.configure(process_app.app, config, None)
    conf = process_app.app.conf
    assert conf.broker_url == "redis://shared:6379/0"
    assert {name.rsplit("-", 1)[1] for name in conf.beat_schedule} == {"us", "au"}


def test_the_cli_reaches_each_domain_on_its_own_broker(process_app: Any) -> None:
    config = per_domain()
    process_app.configure(process_app.app, config, None)
    assert process_app.app_for(Domain.US) is process_app.app
    eu = process_app.app_for(Domain.EU)
    assert eu is not process_app.app
    assert (eu.conf.broker_url, eu.conf.result_backend) == (EU_BROKER, EU_BROKER)
    assert eu.conf.beat_schedule and all(n.endswith("-eu") for n in eu.conf.beat_schedule)
    assert process_app.app_for("eu") is eu  # made once
    process_app.configure(process_app.app, config, None)
    assert process_app.app_for(Domain.EU) is not eu  # configured again: made again
    here, elsewhere = process_app.domains_of(process_app.app)
    assert here == [Domain.US, Domain.AU] and list(elsewhere) == [Domain.EU]


def test_a_dispatcher_refuses_work_of_another_domain(process_app: Any) -> None:
    from workers.dispatch import CeleryDispatcher

    process_app.configure(process_app.app, per_domain(), None)
    eu = CeleryDispatcher(Domain.EU)
    # refused before anything is sent: nothing listens on redis-eu here
    with pytest.raises(ValueError, match="a dispatcher of domain 'eu' cannot send work of "
                                         "domain 'us'"):
        eu.discard("us.accounts.20261201T000000Z.00000000", "us", "accounts")
    with pytest.raises(ValueError, match="cannot send work of domain 'au'"):
        eu.restore_drill("au", None)


def test_a_domains_broker_url_may_come_from_its_own_environment_variable() -> None:
    data = config_data("us", "eu")
    data["domains"]["eu"]["broker_url"] = "redis://redis-eu:6379/0"
    env = {"REGIONVAULT_BROKER_URL_EU": EU_BROKER, "REGIONVAULT_RESULT_BACKEND_EU": EU_BACKEND,
           "REGIONVAULT_BROKER_URL_AU": "redis://redis-au:6379/0"}
    config = parse_config(data, origin="test", env=env)
    assert config.broker_for(Domain.EU) == EU_BROKER
    assert config.backend_for(Domain.EU) == EU_BACKEND
    assert Domain.AU not in config.domains  # a variable never configures a domain
    assert not config.has_own_broker(Domain.US)
