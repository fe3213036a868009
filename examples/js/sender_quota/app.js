// sender-quota, in JavaScript: at most `max_per_hour` messages an hour from each envelope
// sender (counted by the relay, across sessions and, with [counters] url, across nodes);
// each message accepted is stamped with how much of the quota it used.
//
//   [[policy]]
//   name = "sender-quota"
//   module = "sender_quota.wasm"
//   [policy.config]
//   max_per_hour = 500

import { Address, ConfigError, Decision, Policy, exportPolicy } from "./sluice-policy/index.js";

export class SenderQuota extends Policy {
  // At load: a misspelled key or a quota that is not a positive integer refuses the module.
  static validateConfig(cx) {
    cx.expectKeys("max_per_hour");
    const max = cx.configInt("max_per_hour", 500);
    if (max < 1) throw new ConfigError(`config key 'max_per_hour': expected at least 1, got ${max}`);
  }

  onData(cx, headers, body) {
    const max = cx.configInt("max_per_hour", 500);
    const sender = Address.parse(cx.sender() ?? "");
    if (!sender) return Decision.next(); // the null sender: bounces are not counted
    const used = cx.incr(`sender:${sender}`, 3600);
    if (used > max) {
      cx.warn("sender over quota", { sender: String(sender), used, max });
      return Decision.tempfail(451, "4.7.1", `${sender} has sent ${max} messages this hour; try again later`);
    }
    return Decision.next().addHeader("X-Sender-Quota", `${used}/${max}`);
  }
}

export const { hooks, lifecycle, validation, declaredHooks } = exportPolicy(SenderQuota);
