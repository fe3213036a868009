// Unit tests of a policy on Node's test runner (`node --test`), without the relay.
//
// A Session plays one SMTP session against a policy class, calling its hooks in SMTP
// order with what the relay would lend them: the session's facts, the configuration, a
// clock, counters (the relay's sliding window), the registry, logging:
//
//   const s = new Session(NoMailTo, { config: { domains: ["old.example"] } });
//   s.helo("app.example.edu"); s.mailFrom("app@example.edu");
//   assert.equal(s.rcpt("jdoe@old.example").code, 550);
//
// A decision the relay would not take (discard before DATA) fails the test. The clock
// starts at START (2027-01-15 08:00 UTC, a Friday morning, as in the Rust SDK's Session)
// unless `at` says otherwise, and moves only when the test says so (advance).

import { Body, Context, Decision, Verdict, setRelay } from "./index.js";

/** When a simulated session's clock starts, unless it is given another time. */
export const START = Date.parse("2027-01-15T08:00:00Z");

/** Counters as the relay keeps them; share one between sessions as one relay node does. */
export class Counters {
  constructor() { this.counted = new Map(); }
  count(key, windowSeconds, add, nowMs) {
    const length = Math.max(windowSeconds, 1) * 1000;
    const start = nowMs - (nowMs % length);
    const id = `${windowSeconds}\u0000${key}`;
    let c = this.counted.get(id);
    if (!c) this.counted.set(id, (c = { start, current: 0, previous: 0 }));
    if (start !== c.start) {
      c.previous = start - c.start === length ? c.current : 0;
      c.start = start;
      c.current = 0;
    }
    if (add) c.current += 1;
    return c.current + Math.round((c.previous * (length - (nowMs % length))) / length);
  }
}

function inNetwork(ip, network) {
  // IPv4 only, which is what unit tests of campus rules use; an IPv6 network matches exactly.
  const [base, bits = "32"] = network.split("/");
  const v4 = (a) => a.split(".").reduce((n, o) => n * 256 + Number(o), 0);
  if (!/^\d+\.\d+\.\d+\.\d+$/.test(ip) || !/^\d+\.\d+\.\d+\.\d+$/.test(base)) return ip === base;
  const size = 2 ** (32 - Number(bits));
  return Math.floor(v4(ip) / size) === Math.floor(v4(base) / size);
}

function mostSpecific(entries, ip) {
  let best = null;
  for (const [network, value] of entries) {
    const bits = Number(network.split("/")[1] ?? 128);
    if (inNetwork(ip, network) && (!best || bits > best.bits)) best = { bits, network, value };
  }
  return best;
}

function headerFields(raw) {
  const head = raw.split(/\r?\n\r?\n/)[0];
  const fields = [];
  for (const line of head.split(/\r?\n/)) {
    if (/^[ \t]/.test(line) && fields.length) fields[fields.length - 1].value += "\r\n" + line;
    else if (line.includes(":")) {
      const at = line.indexOf(":");
      fields.push({ name: line.slice(0, at), value: line.slice(at + 1).trim() });
    }
  }
  return fields;
}

/** One simulated SMTP session against `PolicyClass`. */
export class Session {
  constructor(PolicyClass, { peer = "127.0.0.1", listener = "default", config = {}, at = START, counters = new Counters(), dryRun = false } = {}) {
    this.PolicyClass = PolicyClass;
    this.policy = new PolicyClass();
    /** Whether the policy is told it runs in dry-run. */
    this.dryRun = dryRun;
    this.peer = peer;
    this.listener = listener;
    this.settings = { ...config };
    this.nowMs = typeof at === "string" ? Date.parse(at) : at;
    this.counters = counters;
    this.heloName = null;
    this.tlsInfo = null;
    this.user = null;
    this.envelopeSender = null;
    this.accepted = [];
    this.registeredNetworks = [];
    this.blockedNetworks = [];
    /** What the policy logged: "info: message key=value". */
    this.logs = [];
    /** The recipients the policy asked to deliver over TLS only. */
    this.tlsRequired = [];
  }

  tls(version = "TLSv1.3", cipher = "TLS13_AES_128_GCM_SHA256") { this.tlsInfo = { version, cipher }; return this; }
  authenticated(user) { this.user = user; return this; }
  registered(network, department) { this.registeredNetworks.push([network, department]); return this; }
  blocked(network, reason) { this.blockedNetworks.push([network, reason]); return this; }
  config(key, value) { this.settings[key] = value; return this; }
  advance(millis) { this.nowMs += millis; }
  /**
   * Runs the policy's `static validateConfig(cx)` on the configuration set so far, as the
   * relay does when it loads the module: throws the ConfigError that would refuse it.
   */
  validateConfig() {
    setRelay(this.backend());
    this.PolicyClass.validateConfig(new Context());
  }

  call(hook, ...args) {
    setRelay(this.backend());
    const decision = this.policy[hook](new Context(), ...args);
    if (!(decision instanceof Decision)) throw new Error(`${hook} returned ${decision}, not a Decision`);
    if (hook !== "onData" && (decision.verdict === Verdict.DISCARD || decision.verdict === Verdict.QUARANTINE)) {
      throw new Error(`${hook} returned ${decision.verdict}, which means something only at the data hook; the relay takes it as continue`);
    }
    return decision;
  }

  connect() { return this.call("onConnect"); }
  helo(name) { this.heloName = name; return this.call("onHelo", name); }
  mailFrom(sender, params = []) {
    this.envelopeSender = sender;
    this.accepted = [];
    this.tlsRequired = [];
    const d = this.call("onMailFrom", sender, params);
    if (refused(d)) this.envelopeSender = null;
    return d;
  }
  rcpt(recipient, params = []) {
    const d = this.call("onRcpt", recipient, params);
    if (!refused(d)) this.accepted.push(recipient);
    return d;
  }
  data(message) {
    const raw = message.replace(/\r?\n/g, "\r\n");
    const bytes = new TextEncoder().encode(raw);
    const body = {
      size: () => BigInt(bytes.length),
      read: (offset, length) => bytes.slice(Number(offset), Number(offset) + length),
      text: (max) => raw.split("\r\n\r\n").slice(1).join("\r\n\r\n").slice(0, max),
      parsedView: () => {
        const fields = headerFields(raw);
        const get = (n) => fields.find((f) => f.name.toLowerCase() === n.toLowerCase())?.value ?? null;
        const list = (n) => (get(n) ? get(n).split(",").map((a) => a.trim().replace(/^.*<|>$/g, "")) : []);
        const type = (get("Content-Type") ?? "text/plain").split(";")[0].trim().toLowerCase();
        return {
          subject: get("Subject"), from: list("From"), sender: get("Sender"), to: list("To"), cc: list("Cc"),
          replyTo: list("Reply-To"), messageId: get("Message-ID"),
          parts: [{ contentType: type, filename: null, size: bytes.length }],
        };
      },
    };
    return this.call("onData", headerFields(raw), new Body(body));
  }

  backend() {
    return {
      connection: () => ({ peerIp: this.peer, peerPort: 50000, localIp: "127.0.0.1", localPort: 25, listener: this.listener }),
      helo: () => this.heloName,
      tls: () => this.tlsInfo,
      authenticatedUser: () => this.user,
      sender: () => this.envelopeSender,
      recipients: () => [...this.accepted],
      config: (key) => this.settings[key] ?? null,
      configKeys: () => Object.keys(this.settings).sort(),
      dryRun: () => this.dryRun,
      nowMs: () => this.nowMs,
      count: (key, window, add) => this.counters.count(key, window, add, this.nowMs),
      lookup: (ip) => {
        const r = mostSpecific(this.registeredNetworks, ip);
        const b = mostSpecific(this.blockedNetworks, ip);
        return { network: r ? r.network : null, department: r ? r.value : null, blocked: b ? b.value : null };
      },
      requireTls: (recipient) => this.tlsRequired.push(recipient),
      log: (level, message, fields) => {
        this.logs.push(`${level}: ${message}` + (fields.length ? " " + fields.map(([k, v]) => `${k}=${v}`).join(" ") : ""));
      },
      parsed: (raw) => raw.parsedView(),
    };
  }
}

function refused(d) {
  return d.verdict === Verdict.REJECT || d.verdict === Verdict.TEMPFAIL;
}
