"""Unit tests of a policy in plain CPython (pytest), without the relay.

A :class:`Session` plays one SMTP session against a policy class, calling its hooks in
SMTP order with what the relay would lend them: the session's facts, the configuration,
a clock, counters (the relay's sliding window), the registry, logging::

    from sluice_policy.testing import Session
    from app import NoMailTo

    def test_a_retired_domain_is_refused():
        s = Session(NoMailTo, config={"domains": ["old.example"]})
        s.connect(); s.helo("app.example.edu"); s.mail_from("app@example.edu")
        assert s.rcpt("jdoe@mail.old.example").code == 550
        assert s.rcpt("jdoe@new.example").verdict is Verdict.CONTINUE

A decision the relay would not take as it is (discard at RCPT, a reply code that does not
match the verdict) fails the test, as it would fail the call in the relay.

The clock starts at :data:`START` (2027-01-15 08:00 UTC, a Friday morning, as in the Rust
SDK's ``Session``) unless ``at`` says otherwise, and moves only when the test says so
(:meth:`Session.advance`).
"""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
from typing import Any, Optional, Union

from . import (
    Body,
    Connection,
    Decision,
    Header,
    Level,
    Parsed,
    Part,
    Policy,
    Standing,
    Verdict,
    _host,
)

START = datetime.datetime(2027, 1, 15, 8, 0, tzinfo=datetime.timezone.utc)
"""When a simulated session's clock starts, unless it is given another time."""


def _millis(at: Union[str, datetime.datetime, int]) -> int:
    if isinstance(at, int):
        return at
    if isinstance(at, str):
        at = datetime.datetime.fromisoformat(at.replace("Z", "+00:00"))
    return int(at.timestamp() * 1000)


class Counters:
    """Counters as the relay keeps them (a sliding window estimated from two fixed ones).
    Pass one to several sessions to share it, as the sessions of one relay node do."""

    def __init__(self) -> None:
        self._counted: dict[tuple[str, int], list[int]] = {}

    def count(self, key: str, window_seconds: int, add: bool, now_ms: int) -> int:
        length = max(window_seconds, 1) * 1000
        start = now_ms - now_ms % length
        counter = self._counted.setdefault((key, window_seconds), [start, 0, 0])
        if start != counter[0]:
            # The window moved on: the one just ended becomes the previous one.
            counter[2] = counter[1] if start - counter[0] == length else 0
            counter[0], counter[1] = start, 0
        counter[1] += 1 if add else 0
        weight = (length - now_ms % length) / length
        return counter[1] + round(counter[2] * weight)


class _Message:
    """The message as the contract's ``body`` resource, for a test."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.message = email.message_from_bytes(raw, policy=email.policy.default)

    def size(self) -> int:
        return len(self.raw)

    def read(self, offset: int, length: int) -> bytes:
        return self.raw[offset : offset + length]

    def text(self, max_bytes: int) -> str:
        part = self.message.get_body(preferencelist=("plain", "html"))
        text = part.get_content() if part is not None else ""
        return text.encode()[:max_bytes].decode(errors="ignore")


def _addresses(message: Any, name: str) -> list[str]:
    header = message.get(name)
    if header is None:
        return []
    return [a.addr_spec for a in getattr(header, "addresses", ())]


class Session:
    """One simulated SMTP session against ``policy``."""

    def __init__(
        self,
        policy: type[Policy],
        *,
        peer: str = "127.0.0.1",
        listener: str = "default",
        config: Optional[dict[str, Any]] = None,
        at: Union[str, datetime.datetime, int] = START,
        counters: Optional[Counters] = None,
        dry_run: bool = False,
    ) -> None:
        self._policy_class = policy
        self.policy = policy()
        self.dry_run = dry_run
        """Whether the policy is told it runs in dry-run."""
        self._peer = peer
        self._listener = listener
        self._config: dict[str, Any] = dict(config or {})
        self.now_ms = _millis(at)
        self.counters = counters or Counters()
        self._helo: Optional[str] = None
        self._tls: Optional[tuple[str, str]] = None
        self._user: Optional[str] = None
        self._sender: Optional[str] = None
        self._recipients: list[str] = []
        self._registered: list[tuple[str, str]] = []
        self._blocked: list[tuple[str, str]] = []
        self.logs: list[str] = []
        """What the policy logged: ``"info: message key=value"``."""
        self.tls_required: list[str] = []
        """The recipients the policy asked to deliver over TLS only."""

    # Setting the scene.
    def tls(self, version: str = "TLSv1.3", cipher: str = "TLS13_AES_128_GCM_SHA256") -> "Session":
        """As after STARTTLS."""
        self._tls = (version, cipher)
        return self

    def authenticated(self, user: str) -> "Session":
        """As after AUTH as ``user``."""
        self._user = user
        return self

    def registered(self, network: str, department: str) -> "Session":
        """The registry holds ``network`` for ``department``."""
        self._registered.append((network, department))
        return self

    def blocked(self, network: str, reason: str) -> "Session":
        """The postmaster blocked ``network``."""
        self._blocked.append((network, reason))
        return self

    def config(self, key: str, value: Any) -> "Session":
        """Sets ``[policy.config]`` ``key``."""
        self._config[key] = value
        return self

    def advance(self, millis: int) -> None:
        """Moves the clock on."""
        self.now_ms += millis

    def validate_config(self) -> None:
        """Runs the policy's :meth:`~sluice_policy.Policy.validate_config` on the
        configuration set so far, as the relay does when it loads the module: raises the
        :class:`~sluice_policy.ConfigError` that would refuse it."""
        _host.install(_Fake(self))
        self._policy_class.validate_config(_context())

    # The hooks, in SMTP order.
    def _call(self, hook: str, *args: Any) -> Decision:
        _host.install(_Fake(self))
        decision = getattr(self.policy, hook)(_context(), *args)
        if not isinstance(decision, Decision):
            raise AssertionError(f"{hook} returned {decision!r}, not a Decision")
        if hook != "on_data" and decision.verdict in (Verdict.DISCARD, Verdict.QUARANTINE):
            raise AssertionError(
                f"{hook} returned {decision.verdict.name}, which means something only at the "
                "data hook; the relay takes it as continue"
            )
        return decision

    def connect(self) -> Decision:
        """The client connects."""
        return self._call("on_connect")

    def helo(self, name: str) -> Decision:
        """HELO/EHLO with ``name``."""
        self._helo = name
        return self._call("on_helo", name)

    def mail_from(self, sender: str, params: tuple = ()) -> Decision:
        """MAIL FROM; the transaction starts unless the policy refuses."""
        self._sender, self._recipients, self.tls_required = sender, [], []
        decision = self._call("on_mail_from", sender, list(params))
        if _refused(decision):
            self._sender = None
        return decision

    def rcpt(self, recipient: str, params: tuple = ()) -> Decision:
        """RCPT TO; the recipient is added unless the policy refuses it."""
        decision = self._call("on_rcpt", recipient, list(params))
        if not _refused(decision):
            self._recipients.append(recipient)
        return decision

    def data(self, message: Union[str, bytes]) -> Decision:
        """The message (header fields, a blank line, the body)."""
        raw = message.encode() if isinstance(message, str) else message
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
        headers = [Header(name, str(value)) for name, value in parsed.items()]
        return self._call("on_data", headers, Body(_Message(raw)))


def _refused(decision: Decision) -> bool:
    return decision.verdict in (Verdict.REJECT, Verdict.TEMPFAIL)


def _context() -> Any:
    from . import Context

    return Context()


def _most_specific(entries: list[tuple[str, str]], ip: str) -> Optional[tuple[str, str]]:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    best = None
    for network, value in entries:
        net = ipaddress.ip_network(network, strict=False)
        if address in net and (best is None or net.prefixlen > best[0].prefixlen):
            best = (net, (network, value))
    return best[1] if best else None


class _Fake:
    """The relay's imports, answered from a :class:`Session`."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def connection(self) -> Connection:
        return Connection(self.s._peer, 50000, "127.0.0.1", 25, self.s._listener)

    def helo(self) -> Optional[str]:
        return self.s._helo

    def tls(self) -> Optional[tuple[str, str]]:
        return self.s._tls

    def authenticated_user(self) -> Optional[str]:
        return self.s._user

    def sender(self) -> Optional[str]:
        return self.s._sender

    def recipients(self) -> list[str]:
        return list(self.s._recipients)

    def config(self, key: str) -> Any:
        return self.s._config.get(key)

    def config_keys(self) -> list[str]:
        return sorted(self.s._config)

    def dry_run(self) -> bool:
        return self.s.dry_run

    def now_ms(self) -> int:
        return self.s.now_ms

    def count(self, key: str, window_seconds: int, add: bool) -> int:
        return self.s.counters.count(key, window_seconds, add, self.s.now_ms)

    def lookup(self, ip: str) -> Standing:
        registered = _most_specific(self.s._registered, ip)
        blocked = _most_specific(self.s._blocked, ip)
        return Standing(
            registered[0] if registered else None,
            registered[1] if registered else None,
            blocked[1] if blocked else None,
        )

    def require_tls(self, recipient: str) -> None:
        self.s.tls_required.append(recipient)

    def log(self, level: Level, message: str, fields: list[tuple[str, str]]) -> None:
        line = f"{level.value}: {message}"
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields)
        self.s.logs.append(line)

    def parsed(self, raw: _Message) -> Parsed:
        m = raw.message
        parts = [
            Part(
                p.get_content_type(),
                p.get_filename(),
                len(p.get_payload(decode=True) or b""),
            )
            for p in m.walk()
            if not p.is_multipart()
        ]
        return Parsed(
            m.get("Subject"),
            _addresses(m, "From"),
            (_addresses(m, "Sender") or [None])[0],
            _addresses(m, "To"),
            _addresses(m, "Cc"),
            _addresses(m, "Reply-To"),
            m.get("Message-ID"),
            parts,
        )
