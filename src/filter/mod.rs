//! The filter: one verdict per message from the checks that look at it.
//!
//! The SMTP session hands over the envelope and the decoded message once the client has sent
//! its end of data, and relays nothing until the verdict is in. The checks themselves (spam
//! rules, sender verification, virus scanning) plug in here; the session does not know what a
//! rule is, and the filter does not know what a socket is.

pub mod headers;
pub mod message;
pub mod policy;

use crate::envelope::Envelope;
use crate::smtp::reply::Reply;

/// What to do with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Relay it upstream (with `Verdict::add_headers`).
    Accept,
    /// Refuse it permanently with this 5xx reply.
    Reject(Reply),
    /// Refuse it for now with this 4xx reply; the client retries later.
    TempFail(Reply),
}

/// The filter's decision for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    /// Header fields to prepend, each a complete field without its final CRLF
    /// (`Name: value`, continuation lines joined with CRLF + whitespace).
    pub add_headers: Vec<String>,
}

impl Verdict {
    pub fn accept() -> Verdict {
        Verdict {
            action: Action::Accept,
            add_headers: Vec::new(),
        }
    }
}

/// The configured set of checks. No check is configured yet, so every message is accepted
/// unchanged; later checks add to the verdict here.
#[derive(Debug, Default)]
pub struct Filter {}

impl Filter {
    pub fn new() -> Filter {
        Filter {}
    }

    /// Decides what to do with `message` (canonical CRLF, as the client sent it).
    pub async fn check(&self, _envelope: &Envelope, _message: &[u8]) -> Verdict {
        Verdict::accept()
    }
}
