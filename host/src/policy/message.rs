//! The message a module reads at the data hook: raw bytes on demand, and a parsed view
//! (`sluice_mail::mime`, on mail-parser) made the first time any module of the session
//! asks, then shared by all.

use bytes::Bytes;
use sluice_mail::Parsed;
use std::sync::{Arc, OnceLock};

/// One message, shared by every module instance's `body` resource for it.
pub struct MessageData {
    pub raw: Bytes,
    /// The parsed view and the message's text.
    parsed: OnceLock<(Parsed, String)>,
}

impl MessageData {
    pub fn new(raw: Bytes) -> Arc<Self> {
        Arc::new(Self {
            raw,
            parsed: OnceLock::new(),
        })
    }

    /// The parsed view and the text, parsing on the first call.
    pub fn parsed(&self) -> &(Parsed, String) {
        self.parsed
            .get_or_init(|| sluice_mail::mime::parse(&self.raw))
    }
}

/// The `body` resource a module holds during one data-hook call.
pub struct MessageBody(pub Arc<MessageData>);
