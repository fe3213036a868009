"""Where the SDK's calls go: the relay's imports (inside the component, through the
bindings componentize-py generates), or a simulated session (``sluice_policy.testing``)."""

from __future__ import annotations

from typing import Any, Optional

# Imported at the top, where componentize-py sees them when it builds the component (an
# import inside a function may be left out of it); absent in plain CPython.
try:
    from wit_world.imports import (
        clock,
        config,
        counters,
        delivery,
        log,
        registry,
        session,
        types,
    )

    from componentize_py_types import Err

    _imports: Optional[tuple] = (clock, config, counters, delivery, log, registry, session)
except ImportError:
    _imports = None

_current: Optional[Any] = None


def backend() -> Any:
    """The relay, or the test's simulated session."""
    global _current
    if _current is None:
        _current = _Relay()
    return _current


def install(fake: Any) -> None:
    """Used by ``sluice_policy.testing``: the hooks' calls go to ``fake`` from now on."""
    global _current
    _current = fake


def refuse_config(message: str) -> None:
    """Answers the relay's ``validate-config`` with an error (inside the component only)."""
    raise Err(message)


def to_relay(decision: Any) -> Any:
    """An SDK decision as the contract's type (inside the component only)."""

    verdict = getattr(types.Verdict, decision.verdict.name)
    reply = (
        types.Reply(decision.reply.code, decision.reply.enhanced, decision.reply.text)
        if decision.reply
        else None
    )
    rewrites = []
    for r in decision.rewrites:
        if r.kind == "set-sender":
            rewrites.append(types.Rewrite_SetSender(r.value))
        elif r.kind == "replace-recipient":
            rewrites.append(types.Rewrite_ReplaceRecipient(r.value))
        elif r.kind == "add-recipient":
            rewrites.append(types.Rewrite_AddRecipient(r.value))
        elif r.kind == "add-header":
            rewrites.append(types.Rewrite_AddHeader(types.Header(r.value, r.header_value or "")))
        elif r.kind == "remove-header":
            rewrites.append(types.Rewrite_RemoveHeader(r.value))
        elif r.kind == "replace-header":
            rewrites.append(types.Rewrite_ReplaceHeader(types.Header(r.value, r.header_value or "")))
        else:
            raise ValueError(f"unknown rewrite {r.kind!r}")
    return types.Decision(verdict, reply, rewrites)


class _Relay:
    """The relay's imports, as the component sees them."""

    def __init__(self) -> None:
        if _imports is None:
            raise RuntimeError(
                "sluice_policy: the relay's functions answer only inside a hook; in unit "
                "tests, call hooks through sluice_policy.testing.Session"
            )
        (
            self._clock,
            self._config,
            self._counters,
            self._delivery,
            self._log,
            self._registry,
            self._session,
        ) = _imports

    def connection(self) -> Any:
        from . import Connection

        c = self._session.connection()
        return Connection(c.peer_ip, c.peer_port, c.local_ip, c.local_port, c.listener)

    def helo(self) -> Optional[str]:
        return self._session.helo()

    def tls(self) -> Optional[tuple[str, str]]:
        t = self._session.tls()
        return (t.version, t.cipher) if t else None

    def authenticated_user(self) -> Optional[str]:
        return self._session.authenticated_user()

    def sender(self) -> Optional[str]:
        return self._session.sender()

    def recipients(self) -> list[str]:
        return list(self._session.recipients())

    def config(self, key: str) -> Any:
        value = self._config.get(key)
        if value is None:
            return None
        inner = value.value
        return list(inner) if isinstance(inner, (list, tuple)) else inner

    def config_keys(self) -> list[str]:
        return list(self._config.keys())

    def dry_run(self) -> bool:
        return self._config.dry_run()

    def now_ms(self) -> int:
        return self._clock.now()

    def count(self, key: str, window_seconds: int, add: bool) -> int:
        if add:
            return self._counters.incr(key, window_seconds)
        return self._counters.peek(key, window_seconds)

    def lookup(self, ip: str) -> Any:
        from . import Standing

        s = self._registry.lookup(ip)
        r = s.registration
        return Standing(r.network if r else None, r.department if r else None, s.blocked)

    def require_tls(self, recipient: str) -> None:
        self._delivery.require_tls(recipient)

    def log(self, level: Any, message: str, fields: list[tuple[str, str]]) -> None:
        wit_level = getattr(self._log.Level, level.name)
        if fields:
            self._log.event(wit_level, message, fields)
        else:
            self._log.log(wit_level, message)

    def parsed(self, raw: Any) -> Any:
        from . import Parsed, Part

        p = raw.parsed()
        return Parsed(
            p.subject,
            list(p.from_),
            p.sender,
            list(p.to),
            list(p.cc),
            list(p.reply_to),
            p.message_id,
            [Part(x.content_type, x.filename, x.size) for x in p.parts],
        )
