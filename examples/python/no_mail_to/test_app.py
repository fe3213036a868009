"""Unit tests of no-mail-to in plain CPython: ``python3 -m pytest examples/python/no_mail_to``."""

import pytest

from app import NoMailTo
from sluice_policy import ConfigError, Verdict, exported
from sluice_policy.testing import Session


def session(**config):
    s = Session(NoMailTo, config={"domains": ["old-campus.example"], **config})
    s.connect()
    s.helo("app.example.edu")
    s.mail_from("app@example.edu")
    return s


def test_a_listed_domain_and_its_subdomains_are_refused():
    s = session()
    d = s.rcpt("jdoe@Mail.Old-Campus.example")
    assert (d.verdict, d.code, d.reply.enhanced) == (Verdict.REJECT, 550, "5.7.1")
    assert s.logs == ["info: recipient refused domain=old-campus.example"]
    assert s.rcpt("jdoe@old-campus.example.org").verdict is Verdict.CONTINUE
    assert s.rcpt("not an address").verdict is Verdict.CONTINUE


def test_the_reason_is_the_postmasters():
    d = session(reason="That domain is retired").rcpt("a@old-campus.example")
    assert d.reply.text == "That domain is retired"


def test_a_wrongly_typed_setting_says_which_key():
    with pytest.raises(ConfigError, match="'domains'"):
        Session(NoMailTo, config={"domains": "old-campus.example"}).rcpt("a@b.example")


def test_the_configuration_is_checked_at_load():
    Session(NoMailTo, config={"domains": ["a.example"], "reason": "retired"}).validate_config()
    with pytest.raises(ConfigError, match="config key 'domains': expected a list of strings"):
        Session(NoMailTo, config={"domains": "a.example"}).validate_config()
    with pytest.raises(ConfigError, match="unknown key 'domian'; this module reads 'domains', 'reason'"):
        Session(NoMailTo, config={"domian": ["a.example"]}).validate_config()


def test_the_relay_calls_it_at_rcpt_only():
    # The hooks it overrides, which the SDK declares to the relay.
    declared_hooks = exported()[3]
    assert declared_hooks().hooks() == ["rcpt"]
