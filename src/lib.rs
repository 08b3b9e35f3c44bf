//! mailwarden: an SMTP filtering proxy in front of an existing MTA.
//!
//! A message's path through the tree, in the order it flows on the wire:
//! `server` (listeners, limits, shutdown) → `smtp` (the session with the client) →
//! `filter` (the verdict) → `relay` (the upstream MTA, or the embedded Maildir).
//! `metrics` watches all of them.

pub mod cli;
pub mod config;
pub mod envelope;
pub mod filter;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod milter;
pub mod relay;
pub mod server;
pub mod smtp;
