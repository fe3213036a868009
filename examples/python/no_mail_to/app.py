"""No mail to these domains: refuses recipients in the configured domains (and their
subdomains), for a campus that must not send to a retired or a look-alike domain.

    [[policy]]
    name = "no-mail-to"
    module = "no_mail_to.wasm"
    [policy.config]
    domains = ["old-campus.example", "examp1e.edu"]
    reason = "That domain is retired; write to the new address"   # optional
"""

from sluice_policy import Address, Context, Decision, Policy, export


class NoMailTo(Policy):
    @classmethod
    def validate_config(cls, cx: Context) -> None:
        # At load: a misspelled key or a wrong type refuses the module, with this message.
        cx.expect_keys("domains", "reason")
        cx.config_list("domains")
        cx.config_str("reason")

    def on_rcpt(self, cx: Context, recipient: str, params: list) -> Decision:
        address = Address.parse(recipient)
        if address is None:
            return Decision.next()
        for domain in cx.config_list("domains", []):
            if address.in_domain(domain):
                cx.info("recipient refused", domain=domain)
                reason = cx.config_str("reason", f"Mail to {domain} is not relayed")
                return Decision.reject(550, "5.7.1", reason)
        return Decision.next()


export(NoMailTo)
