//! The milter front end: mailwarden as a before-queue mail filter of Postfix (or Sendmail),
//! speaking the Sendmail milter protocol, version 6, instead of sitting in the SMTP path as a
//! proxy.
//!
//! The MTA keeps the SMTP session with the client and tells us, stage by stage, what happens
//! in it (connect, HELO, MAIL, RCPT, the message, end of message); we answer each stage with
//! a decision (continue, accept, reject with our reply, tempfail, discard) and, at end of
//! message, with header edits or quarantine. The protocol has no RFC; see `protocol` for the
//! sources it follows.
//!
//! Postfix configuration (main.cf), with `[milter] listen = "127.0.0.1:11332"`:
//!
//! ```text
//! smtpd_milters = inet:127.0.0.1:11332        # or unix:/run/mailwarden/milter.sock
//! non_smtpd_milters = inet:127.0.0.1:11332    # also mail from sendmail(1)/pickup
//! milter_default_action = tempfail            # if mailwarden is down: 451, not unfiltered mail
//! milter_protocol = 6
//! ```
//!
//! The macros mailwarden needs are requested by the milter itself (SETSYMLIST), so the
//! `milter_*_macros` settings can stay at their defaults.
//!
//! - `protocol`: the wire codec (packets, commands, replies, constants).
//! - `session`: one MTA connection driving a [`Handler`].
//! - `listener`: the listening socket and the accept loop.
//! - `handler`: the link to the pipeline (`crate::filter`): stage calls, verdict → replies.

pub mod handler;
pub mod listener;
pub mod protocol;
pub mod session;

#[cfg(test)]
mod test_mta;

pub use listener::{ListenError, Listener, MilterStream, bind, serve};
pub use protocol::{Command, Family, ProtocolError, Response};
pub use session::{
    Connection, Decision, EndOfMessage, Handler, Macros, Modification, Negotiated, Settings,
    Transaction, negotiate, serve_connection,
};
