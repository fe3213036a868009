// Unit tests on Node's test runner: `node --test` here.

import assert from "node:assert/strict";
import { test } from "node:test";
import { SenderQuota, declaredHooks } from "./app.js";
import { Verdict } from "./sluice-policy/index.js";
import { Counters, Session } from "./sluice-policy/testing.js";

function send(counters, sender = "app@example.edu") {
  const s = new Session(SenderQuota, { config: { max_per_hour: 2 }, counters });
  s.helo("app.example.edu");
  s.mailFrom(sender);
  s.rcpt("someone@example.org");
  return [s, s.data("Subject: hi\n\nhello\n")];
}

test("each message is stamped until the quota is used, then refused for now", () => {
  const counters = new Counters();
  assert.deepEqual(send(counters)[1].rewrites, [{ tag: "add-header", val: { name: "X-Sender-Quota", value: "1/2" } }]);
  assert.equal(send(counters)[1].rewrites[0].val.value, "2/2");
  const [s, third] = send(counters);
  assert.equal(third.verdict, Verdict.TEMPFAIL);
  assert.equal(third.code, 451);
  assert.deepEqual(s.logs, ["warn: sender over quota sender=app@example.edu used=3 max=2"]);
  // Another sender has a quota of its own.
  assert.equal(send(counters, "other@example.edu")[1].verdict, Verdict.CONTINUE);
});

test("the window slides: an hour later the quota is back", () => {
  const counters = new Counters();
  send(counters);
  send(counters);
  const s = new Session(SenderQuota, { config: { max_per_hour: 2 }, counters, at: Date.parse("2027-01-15T10:00:00Z") });
  s.mailFrom("app@example.edu");
  assert.equal(s.data("Subject: x\n\ny\n").verdict, Verdict.CONTINUE);
});

test("a wrongly typed setting says which key", () => {
  const s = new Session(SenderQuota, { config: { max_per_hour: "many" } });
  s.mailFrom("app@example.edu");
  assert.throws(() => s.data("Subject: x\n\ny\n"), /'max_per_hour'/);
});

test("the quota is checked when the relay loads the module", () => {
  new Session(SenderQuota, { config: { max_per_hour: 2 } }).validateConfig();
  assert.throws(() => new Session(SenderQuota, { config: { max_per_hour: "2" } }).validateConfig(),
    /config key 'max_per_hour': expected an integer, got "2"/);
  assert.throws(() => new Session(SenderQuota, { config: { max_per_hour: 0 } }).validateConfig(),
    /expected at least 1, got 0/);
  assert.throws(() => new Session(SenderQuota, { config: { max_per_houre: 2 } }).validateConfig(),
    /unknown key 'max_per_houre'; this module reads 'max_per_hour'/);
});

test("the relay calls it at data only: the hook it overrides", () => {
  assert.deepEqual(declaredHooks.hooks(), ["data"]);
});
