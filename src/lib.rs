//! mailwarden: an SMTP filtering proxy in front of an existing MTA.
//!
//! A message's path through the tree, in the order it flows on the wire:
//! `server` (listeners, limits) → a front end: `proxy` (the SMTP session with the client) or
//! `milter` (the MTA's milter session) →
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
pub mod proxy;
pub mod relay;
pub mod server;
pub mod shutdown;
pub mod smtp;
pub mod state;
