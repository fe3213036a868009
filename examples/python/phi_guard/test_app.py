"""Unit tests of phi-guard in plain CPython: ``python3 -m pytest examples/python/phi_guard``."""

import pytest

from app import PhiGuard
from sluice_policy import ConfigError, Verdict
from sluice_policy.testing import Session


def send(rcpt: str, message: str, dry_run: bool = False):
    s = Session(
        PhiGuard,
        peer="10.20.0.5",
        config={"internal_domains": ["example.edu"], "markers": ["[PHI]", "[HIPAA]"]},
        dry_run=dry_run,
    )
    s.helo("ehr.med.example.edu")
    s.mail_from("ehr@med.example.edu")
    s.rcpt(rcpt)
    return s, s.data(message)


def test_refuses_marked_mail_to_outside_addresses():
    s, d = send("doctor@clinic.example.org", "Subject: [PHI] lab results\n\nPatient 123\n")
    assert (d.verdict, d.code) == (Verdict.REJECT, 550)
    assert "<doctor@clinic.example.org>" in d.reply.text
    assert s.logs == ["warn: refused: [PHI] message to <doctor@clinic.example.org> unencrypted"]


def test_finds_the_marker_in_the_text_too():
    _, d = send("doctor@clinic.example.org", "Subject: results\n\nThis is [hipaa] protected.\n")
    assert d.verdict is Verdict.REJECT


def test_lets_marked_mail_go_inside_and_unmarked_mail_anywhere():
    assert send("nurse@med.example.edu", "Subject: [PHI] x\n\ny\n")[1].verdict is Verdict.CONTINUE
    assert send("a@example.org", "Subject: lunch\n\nnoon\n")[1].verdict is Verdict.CONTINUE


def test_lets_encrypted_mail_go_outside():
    smime = (
        "Subject: [PHI] x\nMIME-Version: 1.0\n"
        "Content-Type: application/pkcs7-mime; smime-type=enveloped-data\n"
        "Content-Transfer-Encoding: base64\n\nMIIB\n"
    )
    assert send("a@example.org", smime)[1].verdict is Verdict.CONTINUE


def test_in_dry_run_it_says_it_would_refuse():
    s, d = send("doctor@clinic.example.org", "Subject: [PHI] x\n\ny\n", dry_run=True)
    assert d.verdict is Verdict.REJECT
    assert s.logs == ["warn: would refuse: [PHI] message to <doctor@clinic.example.org> unencrypted"]


def test_without_its_domains_it_is_refused_at_load():
    with pytest.raises(ConfigError, match="'internal_domains'"):
        Session(PhiGuard, config={"markers": ["[PHI]"]}).validate_config()
    with pytest.raises(ConfigError, match="unknown key 'marker'"):
        Session(PhiGuard, config={"internal_domains": ["a.example"], "marker": "x"}).validate_config()
