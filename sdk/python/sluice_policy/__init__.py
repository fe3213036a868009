"""Write Sluice policy modules in Python.

A policy is a class that derives from :class:`Policy` and overrides the hooks it cares
about (the others say "no opinion"), exported by the module ``app.py`` that
``componentize-py`` builds into a WebAssembly component::

    from sluice_policy import Context, Decision, Policy, export

    class NoPrinters(Policy):
        def on_helo(self, cx: Context, name: str) -> Decision:
            if name.startswith("printer"):
                return Decision.reject(550, "5.7.1", "Printers use the print relay")
            return Decision.next()

    export(NoPrinters)

``sluice policy build DIR`` builds it (``componentize-py -w reusable-policy``).

A policy may check its configuration when the relay loads it (at start, at every reload,
and in ``sluice policy check``) by overriding :meth:`Policy.validate_config`: a
:class:`ConfigError` it raises refuses the module, with its message.

The relay makes one object of the class per SMTP session, so attributes may carry state
from one hook to the next within a session. Keep that state on ``self``: the relay starts
a later session on the same WebAssembly instance (much cheaper than a new one), so a
module-level variable lives on from one session to the next.

What a policy works with:

- :class:`Decision`: what a hook answers (a :class:`Verdict`, perhaps an SMTP reply,
  and rewrites of the envelope or the header fields).
- :class:`Context`: what the relay lends a hook: the session's facts, the module's
  configuration (typed getters that raise :class:`ConfigError`), the clock, counters for
  rate limits, the relay registry, logging.
- :class:`Body`: the message at the data hook, read on demand.
- :class:`Address`: an address split the way the relay splits it.
- :mod:`sluice_policy.testing`: unit tests in plain CPython (pytest), with a simulated
  session that calls the hooks in SMTP order.

An exception a hook raises is logged by the relay with its traceback (a warning, tagged
with the module's name and the hook), and the call fails: the module's ``on_error``
decides what the client gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional, Sequence

from . import _host

__all__ = [
    "Address",
    "Body",
    "ConfigError",
    "Connection",
    "Context",
    "Decision",
    "Header",
    "Level",
    "Parsed",
    "Part",
    "Policy",
    "Reply",
    "Rewrite",
    "Standing",
    "Verdict",
    "export",
    "header",
]


class Verdict(Enum):
    """What a module decided."""

    CONTINUE = "continue"
    """No opinion: ask the next module."""
    ACCEPT = "accept"
    """Accept: stop asking modules at this hook."""
    REJECT = "reject"
    """Refuse permanently (5xx); ends the chain."""
    TEMPFAIL = "tempfail"
    """Refuse temporarily (4xx); ends the chain."""
    DISCARD = "discard"
    """Accept and drop the message (data hook only)."""
    QUARANTINE = "quarantine"
    """Accept and hold the message in the queue for a postmaster (data hook only)."""


class Level(Enum):
    """How much a log line matters."""

    TRACE = "trace"
    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"


@dataclass(frozen=True)
class Reply:
    """The SMTP reply sent with a decision."""

    code: int
    """Three digits; must agree with the verdict (5xx reject, 4xx tempfail, else 2xx)."""
    enhanced: str
    """Enhanced status code (RFC 3463), such as ``"5.7.1"``."""
    text: str
    """One line of text for the client."""


@dataclass(frozen=True)
class Header:
    """A header field as it appears in the message."""

    name: str
    value: str


@dataclass(frozen=True)
class Rewrite:
    """A change to the envelope or the message that the relay applies.

    ``kind`` is one of ``set-sender``, ``replace-recipient``, ``add-recipient``,
    ``add-header``, ``remove-header`` and ``replace-header``; ``value`` is an address or a
    header name, and ``header_value`` the value of an added or replacing header field.
    """

    kind: str
    value: str
    header_value: Optional[str] = None


def _check_reply(code: int, enhanced: str, text: str, first: str) -> Reply:
    if not (isinstance(code, int) and 200 <= code <= 599 and str(code)[0] == first):
        raise ValueError(f"reply code {code!r}: a {first}xx code is needed here")
    if not enhanced.startswith(first + "."):
        raise ValueError(f"enhanced code {enhanced!r}: must start with {first}.")
    if "\r" in text or "\n" in text:
        raise ValueError("the reply text must be one line")
    return Reply(code, enhanced, text)


@dataclass(frozen=True)
class Decision:
    """A hook's answer: a verdict, perhaps a reply for the client, and rewrites.

    Build one with the class methods; rewrites chain: ``Decision.next().add_header(...)``.
    """

    verdict: Verdict
    reply: Optional[Reply] = None
    rewrites: tuple[Rewrite, ...] = field(default_factory=tuple)

    @classmethod
    def next(cls) -> "Decision":
        """No opinion: the next module decides."""
        return cls(Verdict.CONTINUE)

    @classmethod
    def accept(cls) -> "Decision":
        """Accept; no later module is asked at this hook."""
        return cls(Verdict.ACCEPT)

    @classmethod
    def reject(cls, code: int, enhanced: str, text: str) -> "Decision":
        """Refuse for good: ``Decision.reject(550, "5.7.1", "Relaying denied")``."""
        return cls(Verdict.REJECT, _check_reply(code, enhanced, text, "5"))

    @classmethod
    def tempfail(cls, code: int, enhanced: str, text: str) -> "Decision":
        """Refuse for now (the client tries again): ``Decision.tempfail(451, "4.7.1", "...")``."""
        return cls(Verdict.TEMPFAIL, _check_reply(code, enhanced, text, "4"))

    @classmethod
    def discard(cls) -> "Decision":
        """Accept the message and drop it (data hook only; logged)."""
        return cls(Verdict.DISCARD)

    @classmethod
    def quarantine(cls) -> "Decision":
        """Accept the message and hold it for a postmaster (data hook only)."""
        return cls(Verdict.QUARANTINE)

    def with_rewrite(self, rewrite: Rewrite) -> "Decision":
        """This decision with one more rewrite."""
        return Decision(self.verdict, self.reply, self.rewrites + (rewrite,))

    def add_header(self, name: str, value: str) -> "Decision":
        """Adds a header field at the top of the message (data hook)."""
        return self.with_rewrite(Rewrite("add-header", name, value))

    def replace_header(self, name: str, value: str) -> "Decision":
        """Replaces every field named ``name`` with one of this value (data hook)."""
        return self.with_rewrite(Rewrite("replace-header", name, value))

    def remove_header(self, name: str) -> "Decision":
        """Removes every field named ``name`` (data hook)."""
        return self.with_rewrite(Rewrite("remove-header", name))

    def set_sender(self, sender: str) -> "Decision":
        """Replaces the envelope sender ("" is the null sender)."""
        return self.with_rewrite(Rewrite("set-sender", sender))

    def replace_recipient(self, recipient: str) -> "Decision":
        """Replaces the recipient being decided on (rcpt hook)."""
        return self.with_rewrite(Rewrite("replace-recipient", recipient))

    def add_recipient(self, recipient: str) -> "Decision":
        """Adds a recipient to the transaction."""
        return self.with_rewrite(Rewrite("add-recipient", recipient))

    @property
    def code(self) -> Optional[int]:
        """The reply code, if the decision carries a reply."""
        return self.reply.code if self.reply else None


class ConfigError(ValueError):
    """The module's configuration has a value of the wrong type for a key."""


@dataclass(frozen=True)
class Connection:
    """How the client reached the relay."""

    peer_ip: str
    peer_port: int
    local_ip: str
    local_port: int
    listener: str


@dataclass(frozen=True)
class Standing:
    """What the relay registry says of an address."""

    network: Optional[str]
    """The most specific registration covering it, if any."""
    department: Optional[str]
    """That registration's department."""
    blocked: Optional[str]
    """Why the postmaster blocked it, if blocked."""

    @property
    def registered(self) -> bool:
        return self.network is not None


@dataclass(frozen=True)
class Part:
    """A MIME part, as the relay's parser sees it."""

    content_type: str
    filename: Optional[str]
    size: int


@dataclass(frozen=True)
class Parsed:
    """The message as the relay parsed it (MIME decoded, encoded words decoded)."""

    subject: Optional[str]
    from_: list[str]
    sender: Optional[str]
    to: list[str]
    cc: list[str]
    reply_to: list[str]
    message_id: Optional[str]
    parts: list[Part]


@dataclass(frozen=True)
class Address:
    """An address split as the relay splits it: the local part as written, the domain in
    lower case. ``Address.parse`` returns ``None`` for what is not an address."""

    local: str
    domain: str

    @classmethod
    def parse(cls, text: str) -> Optional["Address"]:
        text = text.strip().removeprefix("<").removesuffix(">")
        local, at, domain = text.rpartition("@")
        if not at or not local or not domain or " " in text or "@" in domain:
            return None
        return cls(local, domain.lower().rstrip("."))

    def in_domain(self, domain: str) -> bool:
        """Is the address in ``domain`` or one of its subdomains?"""
        domain = domain.lower().rstrip(".")
        return self.domain == domain or self.domain.endswith("." + domain)

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def header(headers: Sequence[Header], name: str) -> Optional[str]:
    """The value of the first header field named ``name`` (any case), if there is one."""
    for h in headers:
        if h.name.lower() == name.lower():
            return h.value
    return None


class Body:
    """The message at the data hook, read on demand rather than copied whole."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def size(self) -> int:
        """Size in bytes."""
        return self._raw.size()

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``; fewer at the end."""
        return bytes(self._raw.read(offset, length))

    def to_bytes(self) -> bytes:
        """The whole message (as received, after dot-unstuffing)."""
        out = bytearray()
        while len(out) < self.size():
            chunk = self.read(len(out), 65536)
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def parsed(self) -> Parsed:
        """The parsed view (the relay parses a message once, whichever modules ask)."""
        return _host.backend().parsed(self._raw)

    def text(self, max_bytes: int = 65536) -> str:
        """The message's text (its first text/plain part, or its HTML as text), decoded."""
        return self._raw.text(max_bytes)


class Context:
    """What the relay lends a hook."""

    # The session's facts.
    def connection(self) -> Connection:
        """The TCP connection."""
        return _host.backend().connection()

    def peer_ip(self) -> str:
        """The client's IP address, in canonical text form."""
        return self.connection().peer_ip

    def helo(self) -> Optional[str]:
        """The HELO/EHLO name, once given."""
        return _host.backend().helo()

    def tls(self) -> Optional[tuple[str, str]]:
        """``(version, cipher)`` once TLS is negotiated."""
        return _host.backend().tls()

    def authenticated_user(self) -> Optional[str]:
        """The user the client authenticated as, if it did."""
        return _host.backend().authenticated_user()

    def sender(self) -> Optional[str]:
        """The envelope sender of the transaction, once given ("" is the null sender)."""
        return _host.backend().sender()

    def recipients(self) -> list[str]:
        """The recipients accepted so far in the transaction."""
        return _host.backend().recipients()

    # The module's configuration ([policy.config] in policies.toml).
    def config(self, key: str) -> Any:
        """A value as set (str, int, bool or list of str), or None."""
        return _host.backend().config(key)

    def config_keys(self) -> list[str]:
        """Every key that is set."""
        return _host.backend().config_keys()

    def _typed(self, key: str, kind: type, name: str, default: Any) -> Any:
        value = self.config(key)
        if value is None:
            return default
        # bool is an int in Python: an integer key must not take true.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"config key {key!r}: expected {name}, got {value!r}")
        return value

    def config_str(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """A text value; raises :class:`ConfigError` if the key holds something else."""
        return self._typed(key, str, "text", default)

    def config_int(self, key: str, default: Optional[int] = None) -> Optional[int]:
        """An integer value; raises :class:`ConfigError` if the key holds something else."""
        return self._typed(key, int, "an integer", default)

    def config_bool(self, key: str, default: Optional[bool] = None) -> Optional[bool]:
        """A boolean value; raises :class:`ConfigError` if the key holds something else."""
        return self._typed(key, bool, "true or false", default)

    def config_list(
        self, key: str, default: Optional[list[str]] = None
    ) -> Optional[list[str]]:
        """A list of strings; raises :class:`ConfigError` if the key holds something else."""
        return self._typed(key, list, "a list of strings", default)

    def expect_keys(self, *known: str) -> None:
        """Raises :class:`ConfigError` naming a key that is set but not in ``known``: a
        misspelled key is otherwise silently unread. For :meth:`Policy.validate_config`."""
        for key in self.config_keys():
            if key not in known:
                reads = ", ".join(repr(k) for k in known) or "none"
                raise ConfigError(f"unknown key {key!r}; this module reads {reads}")

    def dry_run(self) -> bool:
        """Whether the module runs in dry-run (``mode = "dry-run"``): its decisions are
        logged, not applied. Its log lines are tagged with the mode anyway."""
        return _host.backend().dry_run()

    # The clock, counters, the registry, delivery.
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch, by the relay's clock."""
        return _host.backend().now_ms()

    def incr(self, key: str, window_seconds: int) -> int:
        """Counts one event for ``key``; the count in the last ``window_seconds``, this one included."""
        return _host.backend().count(key, window_seconds, True)

    def peek(self, key: str, window_seconds: int) -> int:
        """The count for ``key`` in the last ``window_seconds``, counting nothing."""
        return _host.backend().count(key, window_seconds, False)

    def registry(self, ip: str) -> Standing:
        """What the relay registry says of ``ip``."""
        return _host.backend().lookup(ip)

    def require_tls(self, recipient: str) -> None:
        """Deliver to ``recipient`` only over TLS, whatever its domain's own rule."""
        _host.backend().require_tls(recipient)

    # Logging, into the relay's log, tagged with the module and the session.
    def log(self, level: Level, message: str, **fields: Any) -> None:
        """A line; named fields appear as ``key=value``."""
        _host.backend().log(level, message, [(k, str(v)) for k, v in fields.items()])

    def debug(self, message: str, **fields: Any) -> None:
        self.log(Level.DEBUG, message, **fields)

    def info(self, message: str, **fields: Any) -> None:
        self.log(Level.INFO, message, **fields)

    def warn(self, message: str, **fields: Any) -> None:
        self.log(Level.WARN, message, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self.log(Level.ERROR, message, **fields)


class Policy:
    """A policy module: override the hooks you need; the rest answer "no opinion".

    One object is made (with no arguments) at a session's first hook and serves that
    session's hooks.
    """

    @classmethod
    def validate_config(cls, cx: Context) -> None:
        """Checks the configuration when the relay loads the module: raise
        :class:`ConfigError` with a message naming the key, and the module is refused with
        it. The typed getters and :meth:`Context.expect_keys` raise such errors. Only the
        configuration answers here: there is no client yet."""

    def on_connect(self, cx: Context) -> Decision:
        """A client connected (before the greeting)."""
        return Decision.next()

    def on_helo(self, cx: Context, name: str) -> Decision:
        """HELO or EHLO with this name."""
        return Decision.next()

    def on_mail_from(
        self, cx: Context, sender: str, params: list[tuple[str, Optional[str]]]
    ) -> Decision:
        """MAIL FROM with this address ("" is the null sender) and its ESMTP parameters."""
        return Decision.next()

    def on_rcpt(
        self, cx: Context, recipient: str, params: list[tuple[str, Optional[str]]]
    ) -> Decision:
        """RCPT TO with this address and its ESMTP parameters."""
        return Decision.next()

    def on_data(self, cx: Context, headers: list[Header], body: Body) -> Decision:
        """The message: its header fields in order, and its text."""
        return Decision.next()


class _Instance:
    """The session's policy object, made at its first hook and dropped by ``reset``."""

    def __init__(self, policy: type[Policy]) -> None:
        self.policy = policy
        self.current: Optional[Policy] = None

    def call(self, hook: str, *args: Any) -> Decision:
        if self.current is None:
            self.current = self.policy()
        # An exception goes on up: componentize-py writes its traceback to stderr, which
        # the relay logs (a warning, tagged with the module and the hook), and the call
        # fails, so the module's on_error decides.
        decision = getattr(self.current, hook)(Context(), *args)
        if not isinstance(decision, Decision):
            raise TypeError(
                f"{type(self.current).__name__}.{hook} returned {decision!r}, not a Decision"
            )
        return decision

    def reset(self) -> None:
        self.current = None


_exported: Optional[tuple[type, type, type, type]] = None

# Each hook's method and its name in the contract and policies.toml.
_HOOKS = {
    "on_connect": "connect",
    "on_helo": "helo",
    "on_mail_from": "mail-from",
    "on_rcpt": "rcpt",
    "on_data": "data",
}


def export(policy: type[Policy]) -> None:
    """Makes ``policy`` the module's policy: write ``export(MyPolicy)`` at the end of
    ``app.py``. (``sluice policy build`` exports the classes componentize-py wants.)"""
    global _exported
    if not (isinstance(policy, type) and issubclass(policy, Policy)):
        raise TypeError("export() takes a class derived from sluice_policy.Policy")
    _exported = _exports(policy)


def exported() -> tuple[type, type, type, type]:
    """The ``Hooks``, ``Lifecycle``, ``Validation`` and ``DeclaredHooks`` classes of the
    policy ``app.py`` exported, for the component's entry module that ``sluice policy
    build`` writes."""
    if _exported is None:
        raise TypeError("app.py does not call sluice_policy.export(YourPolicy)")
    return _exported


def _exports(policy: type[Policy]) -> tuple[type, type, type, type]:
    instance = _Instance(policy)
    to_relay = _host.to_relay

    class Hooks:
        def on_connect(self) -> Any:
            return to_relay(instance.call("on_connect"))

        def on_helo(self, name: str) -> Any:
            return to_relay(instance.call("on_helo", name))

        def on_mail_from(self, sender: str, params: list) -> Any:
            return to_relay(instance.call("on_mail_from", sender, list(params)))

        def on_rcpt(self, recipient: str, params: list) -> Any:
            return to_relay(instance.call("on_rcpt", recipient, list(params)))

        def on_data(self, headers: list, message: Any) -> Any:
            fields = [Header(h.name, h.value) for h in headers]
            return to_relay(instance.call("on_data", fields, Body(message)))

    class Lifecycle:
        def reset(self) -> None:
            instance.reset()

    class Validation:
        def validate_config(self) -> None:
            try:
                policy.validate_config(Context())
            except ConfigError as e:
                _host.refuse_config(str(e))

    class DeclaredHooks:
        def hooks(self) -> list[str]:
            # The hooks the policy overrides: the others can only say "no opinion", so the
            # relay need not call them.
            return [
                name
                for method, name in _HOOKS.items()
                if getattr(policy, method) is not getattr(Policy, method)
            ]

    Hooks.policy = policy  # type: ignore[attr-defined]
    return Hooks, Lifecycle, Validation, DeclaredHooks
