//! What the Sluice relay and the policy SDK must read and judge alike.
//!
//! A policy module is unit-tested natively against the SDK's simulated session and then
//! runs inside the relay. Wherever the two would otherwise each have their own code, a
//! test could pass that the relay then contradicts. So the rules both apply live here,
//! once, as plain Rust (no WebAssembly bindings), and both depend on this crate:
//!
//! - [`mime`] — how a message is read: its header fields, and the parsed view (subject,
//!   addresses, MIME parts) and text a module gets at the data hook. Parsing needs the
//!   `parser` feature; a module built for WebAssembly asks the relay instead.
//! - [`address`] — envelope addresses split into local part and domain, and domains
//!   compared in their ASCII (IDNA) form.
//! - [`reply`] — which reply a policy's decision may carry: the code fits the verdict, the
//!   enhanced status code fits the code, the text is one printable line.
//! - [`counter`] — how a counter with a time window counts (the contract's `counters`).

#![deny(missing_docs)]

pub mod address;
pub mod counter;
pub mod mime;
pub mod reply;

pub use address::{Address, AddressError, ascii_domain, canonical_mailbox};
pub use mime::{Parsed, Part};
