// Write Sluice policy modules in JavaScript (built with componentize-js through jco).
//
// A policy is a class that extends Policy and overrides the hooks it cares about (the
// others say "no opinion"), exported from app.js:
//
//   import { Decision, Policy, exportPolicy } from "./sluice-policy/index.js";
//
//   export class NoPrinters extends Policy {
//     onHelo(cx, name) {
//       if (name.startsWith("printer")) {
//         return Decision.reject(550, "5.7.1", "Printers use the print relay");
//       }
//       return Decision.next();
//     }
//   }
//
//   export const { hooks, lifecycle, validation, declaredHooks } = exportPolicy(NoPrinters);
//
// A policy may check its configuration when the relay loads it (at start, at every
// reload, and in `sluice policy check`) with a `static validateConfig(cx)`: a ConfigError
// it throws refuses the module, with its message.
//
// `sluice policy build DIR` builds it. The relay makes one object of the class per SMTP
// session, so fields may carry state from one hook to the next within a session; a later
// session on the same instance gets a new object.
//
// An exception a hook throws is logged by the relay with its stack, and the call fails:
// the module's on_error decides what the client gets.

/** What a module decided. */
export const Verdict = Object.freeze({
  CONTINUE: "continue",
  ACCEPT: "accept",
  REJECT: "reject",
  TEMPFAIL: "tempfail",
  DISCARD: "discard",
  QUARANTINE: "quarantine",
});

/** How much a log line matters. */
export const Level = Object.freeze({
  TRACE: "trace",
  DEBUG: "debug",
  INFO: "info",
  WARN: "warn",
  ERROR: "error",
});

function checkReply(code, enhanced, text, first) {
  if (!Number.isInteger(code) || String(code).length !== 3 || String(code)[0] !== first) {
    throw new RangeError(`reply code ${code}: a ${first}xx code is needed here`);
  }
  if (!String(enhanced).startsWith(first + ".")) {
    throw new RangeError(`enhanced code ${enhanced}: must start with ${first}.`);
  }
  if (/[\r\n]/.test(text)) throw new RangeError("the reply text must be one line");
  return Object.freeze({ code, enhanced, text });
}

/** A hook's answer: a verdict, perhaps a reply for the client, and rewrites. */
export class Decision {
  constructor(verdict, reply = null, rewrites = []) {
    this.verdict = verdict;
    this.reply = reply;
    this.rewrites = Object.freeze(rewrites);
    Object.freeze(this);
  }
  /** No opinion: the next module decides. */
  static next() { return new Decision(Verdict.CONTINUE); }
  /** Accept; no later module is asked at this hook. */
  static accept() { return new Decision(Verdict.ACCEPT); }
  /** Refuse for good: Decision.reject(550, "5.7.1", "Relaying denied"). */
  static reject(code, enhanced, text) {
    return new Decision(Verdict.REJECT, checkReply(code, enhanced, text, "5"));
  }
  /** Refuse for now: Decision.tempfail(451, "4.7.1", "Try later"). */
  static tempfail(code, enhanced, text) {
    return new Decision(Verdict.TEMPFAIL, checkReply(code, enhanced, text, "4"));
  }
  /** Accept the message and drop it (data hook only; logged). */
  static discard() { return new Decision(Verdict.DISCARD); }
  /** Accept the message and hold it for a postmaster (data hook only). */
  static quarantine() { return new Decision(Verdict.QUARANTINE); }

  with(rewrite) { return new Decision(this.verdict, this.reply, [...this.rewrites, rewrite]); }
  addHeader(name, value) { return this.with({ tag: "add-header", val: { name, value } }); }
  replaceHeader(name, value) { return this.with({ tag: "replace-header", val: { name, value } }); }
  removeHeader(name) { return this.with({ tag: "remove-header", val: name }); }
  setSender(sender) { return this.with({ tag: "set-sender", val: sender }); }
  replaceRecipient(recipient) { return this.with({ tag: "replace-recipient", val: recipient }); }
  addRecipient(recipient) { return this.with({ tag: "add-recipient", val: recipient }); }
  /** The reply code, if the decision carries a reply. */
  get code() { return this.reply ? this.reply.code : null; }
}

/** The module's configuration has a value of the wrong type for a key. */
export class ConfigError extends TypeError {}

/** An address split as the relay splits it: the local part as written, the domain in lower case. */
export class Address {
  constructor(local, domain) {
    this.local = local;
    this.domain = domain;
  }
  /** An Address, or null for what is not an address. */
  static parse(text) {
    text = String(text).trim().replace(/^</, "").replace(/>$/, "");
    const at = text.lastIndexOf("@");
    if (at <= 0 || at === text.length - 1 || /\s/.test(text)) return null;
    return new Address(text.slice(0, at), text.slice(at + 1).toLowerCase().replace(/\.$/, ""));
  }
  /** Is the address in `domain` or one of its subdomains? */
  inDomain(domain) {
    domain = domain.toLowerCase().replace(/\.$/, "");
    return this.domain === domain || this.domain.endsWith("." + domain);
  }
  toString() { return `${this.local}@${this.domain}`; }
}

/** The value of the first header field named `name` (any case), or null. */
export function header(headers, name) {
  const found = headers.find((h) => h.name.toLowerCase() === name.toLowerCase());
  return found ? found.value : null;
}

let relay = null;

/** Where the SDK's calls go: set by the build's entry (the relay's imports), or by a test. */
export function setRelay(backend) { relay = backend; }

function host() {
  if (!relay) throw new Error("sluice-policy: the relay's functions answer only inside a hook");
  return relay;
}

/** The message at the data hook, read on demand. */
export class Body {
  constructor(raw) { this.raw = raw; }
  /** Size in bytes. */
  size() { return Number(this.raw.size()); }
  /** Up to `length` bytes from `offset` (a Uint8Array). */
  read(offset, length) { return this.raw.read(BigInt(offset), length); }
  /** The parsed view: { subject, from, sender, to, cc, replyTo, messageId, parts }. */
  parsed() { return host().parsed(this.raw); }
  /** The message's text (its first text/plain part, or its HTML as text), decoded. */
  text(maxBytes = 65536) { return this.raw.text(maxBytes); }
}

function typed(cx, key, check, name, fallback) {
  const value = cx.config(key);
  if (value === null || value === undefined) return fallback;
  if (!check(value)) {
    throw new ConfigError(`config key '${key}': expected ${name}, got ${JSON.stringify(value)}`);
  }
  return value;
}

/** What the relay lends a hook. */
export class Context {
  /** The TCP connection: { peerIp, peerPort, localIp, localPort, listener }. */
  connection() { return host().connection(); }
  /** The client's IP address. */
  peerIp() { return this.connection().peerIp; }
  /** The HELO/EHLO name, once given. */
  helo() { return host().helo(); }
  /** { version, cipher } once TLS is negotiated, else null. */
  tls() { return host().tls(); }
  /** The user the client authenticated as, if it did. */
  authenticatedUser() { return host().authenticatedUser(); }
  /** The envelope sender, once given ("" is the null sender). */
  sender() { return host().sender(); }
  /** The recipients accepted so far in the transaction. */
  recipients() { return host().recipients(); }

  /** A configuration value as set (string, number, boolean or array of strings), or null. */
  config(key) { return host().config(key); }
  /** Every key that is set. */
  configKeys() { return host().configKeys(); }
  configStr(key, fallback = null) { return typed(this, key, (v) => typeof v === "string", "text", fallback); }
  configInt(key, fallback = null) { return typed(this, key, Number.isInteger, "an integer", fallback); }
  configBool(key, fallback = null) { return typed(this, key, (v) => typeof v === "boolean", "true or false", fallback); }
  configList(key, fallback = null) {
    return typed(this, key, (v) => Array.isArray(v) && v.every((x) => typeof x === "string"), "a list of strings", fallback);
  }
  /**
   * Throws a ConfigError naming a key that is set but not in `known`: a misspelled key is
   * otherwise silently unread. For `static validateConfig(cx)`.
   */
  expectKeys(...known) {
    for (const key of this.configKeys()) {
      if (!known.includes(key)) {
        const reads = known.map((k) => `'${k}'`).join(", ") || "none";
        throw new ConfigError(`unknown key '${key}'; this module reads ${reads}`);
      }
    }
  }
  /** Whether the module runs in dry-run: its decisions are logged, not applied. */
  dryRun() { return host().dryRun(); }

  /** Milliseconds since the Unix epoch, by the relay's clock. */
  nowMs() { return host().nowMs(); }
  /** Counts one event for `key`; the count in the last `windowSeconds`, this one included. */
  incr(key, windowSeconds) { return host().count(key, windowSeconds, true); }
  /** The count for `key` in the last `windowSeconds`, counting nothing. */
  peek(key, windowSeconds) { return host().count(key, windowSeconds, false); }
  /** What the relay registry says of `ip`: { network, department, blocked } (null where none). */
  registry(ip) { return host().lookup(ip); }
  /** Deliver to `recipient` only over TLS. */
  requireTls(recipient) { host().requireTls(recipient); }

  /** A line in the relay's log; `fields` appear as key=value. */
  log(level, message, fields = {}) {
    host().log(level, message, Object.entries(fields).map(([k, v]) => [k, String(v)]));
  }
  debug(message, fields) { this.log(Level.DEBUG, message, fields); }
  info(message, fields) { this.log(Level.INFO, message, fields); }
  warn(message, fields) { this.log(Level.WARN, message, fields); }
  error(message, fields) { this.log(Level.ERROR, message, fields); }
}

/** A policy module: override the hooks you need; the rest answer "no opinion". */
export class Policy {
  /**
   * Checks the configuration when the relay loads the module: throw a ConfigError naming
   * the key, and the module is refused with its message. The typed getters and
   * `cx.expectKeys` throw such errors. Only the configuration answers: there is no client.
   */
  static validateConfig(cx) {}
  onConnect(cx) { return Decision.next(); }
  onHelo(cx, name) { return Decision.next(); }
  onMailFrom(cx, sender, params) { return Decision.next(); }
  onRcpt(cx, recipient, params) { return Decision.next(); }
  onData(cx, headers, body) { return Decision.next(); }
}

/** The decision as the contract's type. */
function toRelay(d) {
  return {
    verdict: d.verdict,
    reply: d.reply ? { code: d.reply.code, enhanced: d.reply.enhanced, text: d.reply.text } : undefined,
    rewrites: d.rewrites.map((r) => ({ tag: r.tag, val: r.val })),
  };
}

/**
 * The `hooks`, `lifecycle`, `validation` and `declaredHooks` exports for `PolicyClass`:
 * `export const { hooks, lifecycle, validation, declaredHooks } = exportPolicy(MyPolicy);`
 * at the end of app.js.
 */
export function exportPolicy(PolicyClass) {
  if (!(PolicyClass.prototype instanceof Policy)) {
    throw new TypeError("exportPolicy() takes a class that extends Policy");
  }
  let current = null;
  const call = (hook, ...args) => {
    if (!current) current = new PolicyClass();
    try {
      const decision = current[hook](new Context(), ...args);
      if (!(decision instanceof Decision)) {
        throw new TypeError(`${PolicyClass.name}.${hook} returned ${decision}, not a Decision`);
      }
      return decision;
    } catch (e) {
      // Into the relay's log with the stack; then the call fails and on_error decides.
      host().log(Level.ERROR, `${hook} threw: ${e && e.stack ? e.stack : e}`, []);
      throw e;
    }
  };
  const hooks = {
    onConnect: () => toRelay(call("onConnect")),
    onHelo: (name) => toRelay(call("onHelo", name)),
    onMailFrom: (sender, params) => toRelay(call("onMailFrom", sender, params)),
    onRcpt: (recipient, params) => toRelay(call("onRcpt", recipient, params)),
    onData: (headers, message) => toRelay(call("onData", headers, new Body(message))),
  };
  const lifecycle = { reset: () => { current = null; } };
  const validation = {
    validateConfig: () => {
      try {
        PolicyClass.validateConfig(new Context());
      } catch (e) {
        // The contract's error (its payload is what the postmaster reads); anything else
        // fails the check with its stack in the log.
        if (e instanceof ConfigError) throw Object.assign(new Error(e.message), { payload: e.message });
        host().log(Level.ERROR, `validateConfig threw: ${e && e.stack ? e.stack : e}`, []);
        throw e;
      }
    },
  };
  // The hooks the class overrides: the others can only say "no opinion", so the relay need
  // not call them.
  const names = { onConnect: "connect", onHelo: "helo", onMailFrom: "mail-from", onRcpt: "rcpt", onData: "data" };
  const declared = Object.keys(names)
    .filter((method) => PolicyClass.prototype[method] !== Policy.prototype[method])
    .map((method) => names[method]);
  const declaredHooks = { hooks: () => declared };
  return { hooks, lifecycle, validation, declaredHooks, PolicyClass, call };
}

/** The relay's imports as the SDK calls them (the build's entry passes them in). */
export function relayBackend({ session, config, log, clock, counters, registry, delivery }) {
  const nullable = (v) => (v === undefined ? null : v);
  return {
    connection: () => session.connection(),
    helo: () => nullable(session.helo()),
    tls: () => nullable(session.tls()),
    authenticatedUser: () => nullable(session.authenticatedUser()),
    sender: () => nullable(session.sender()),
    recipients: () => session.recipients(),
    config: (key) => {
      const value = config.get(key);
      return value === undefined ? null : typeof value.val === "bigint" ? Number(value.val) : value.val;
    },
    configKeys: () => config.keys(),
    dryRun: () => config.dryRun(),
    nowMs: () => Number(clock.now()),
    count: (key, window, add) => Number(add ? counters.incr(key, window) : counters.peek(key, window)),
    lookup: (ip) => {
      const s = registry.lookup(ip);
      const r = s.registration;
      return { network: r ? r.network : null, department: r ? r.department : null, blocked: nullable(s.blocked) };
    },
    requireTls: (recipient) => delivery.requireTls(recipient),
    log: (level, message, fields) => (fields.length ? log.event(level, message, fields) : log.log(level, message)),
    parsed: (raw) => {
      const p = raw.parsed();
      return {
        subject: nullable(p.subject),
        from: p.from,
        sender: nullable(p.sender),
        to: p.to,
        cc: p.cc,
        replyTo: p.replyTo,
        messageId: nullable(p.messageId),
        parts: p.parts.map((x) => ({ contentType: x.contentType, filename: nullable(x.filename), size: Number(x.size) })),
      };
    },
  };
}
