"""phi-guard, in Python: the School of Medicine's rule for the campus relay (the same rule
as examples/phi-guard in Rust, and the same scenarios pass).

Mail marked as carrying protected health information (a marker such as ``[PHI]`` in the
subject or the text) may go to addresses inside the organisation, and outside it only
when the sender encrypted it end to end (S/MIME). Anything else is refused at the end of
DATA, so the application learns at once and nothing leaves.

Config (``[policy.config]`` in policies.toml):

- ``internal_domains = ["example.edu"]``: the organisation's domains (and subdomains).
- ``markers = ["[PHI]", "[HIPAA]"]``: what marks a message (case-insensitive).

Run first in dry-run (``mode = "dry-run"``): the module then logs "would refuse" for each
message it would have refused, to count them before it enforces.
"""

from typing import Optional

from sluice_policy import Address, Body, ConfigError, Context, Decision, Header, Policy, export

# How far into the text to look for a marker.
TEXT_SCAN = 64 * 1024

ENCRYPTED = {"application/pkcs7-mime", "application/x-pkcs7-mime", "application/pgp-encrypted"}


class PhiGuard(Policy):
    @classmethod
    def validate_config(cls, cx: Context) -> None:
        cx.expect_keys("internal_domains", "markers")
        if not cx.config_list("internal_domains"):
            raise ConfigError("config key 'internal_domains': set the organisation's domains")
        cx.config_list("markers")

    def marked(self, cx: Context, body: Body) -> Optional[str]:
        subject = (body.parsed().subject or "").lower()
        text = body.text(TEXT_SCAN).lower()
        for marker in cx.config_list("markers", ["[PHI]"]):
            if marker.lower() in subject or marker.lower() in text:
                return marker
        return None

    def on_data(self, cx: Context, headers: list[Header], body: Body) -> Decision:
        marker = self.marked(cx, body)
        if marker is None:
            return Decision.next()
        if any(p.content_type in ENCRYPTED for p in body.parsed().parts):
            cx.info(f"{marker} message is encrypted; allowed")
            return Decision.next()
        internal = cx.config_list("internal_domains", [])
        for rcpt in cx.recipients():
            address = Address.parse(rcpt)
            if address is None or not any(address.in_domain(d) for d in internal):
                said = "would refuse" if cx.dry_run() else "refused"
                cx.warn(f"{said}: {marker} message to <{rcpt}> unencrypted")
                return Decision.reject(
                    550,
                    "5.7.1",
                    f"Protected health information ({marker}) may not be sent unencrypted "
                    f"to <{rcpt}>; encrypt it (S/MIME) or send it inside the organisation",
                )
        return Decision.next()


export(PhiGuard)
