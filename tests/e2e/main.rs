//! End-to-end tests: the real `sluice` binary, spoken to by real SMTP clients (a raw
//! client, mail-send, swaks and Python's smtplib), delivering to a real SMTP sink.

mod support;

mod builtins;
mod clients;
mod config;
mod contract;
mod delivery;
mod dkim;
mod durability;
mod example_policy;
mod files;
mod hostile_clients;
mod languages;
mod logs;
mod metrics;
mod module_config;
mod pair;
mod portal;
mod portal_browser;
mod protocol;
mod queue;
mod registry;
mod relaying;
mod reload;
mod sandbox;
mod smuggling;
mod submission;
mod systemd;
mod tools;
