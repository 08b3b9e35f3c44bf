//! The SMTP proxy front end: mailwarden on port 25 (or 10025 behind Postfix's
//! `smtpd_proxy_filter`), speaking SMTP to the client and, for each message, driving the
//! filter's stages and relaying what it accepts to the upstream MTA before it answers.
//!
//! It knows the protocol (`session`, `xclient` for trusted proxies naming the real client)
//! and nothing about rules: the filter (`crate::filter`) gives it a verdict, the relay
//! (`crate::relay`) the upstream's answer. The listeners and session limits that start
//! sessions are the server's (`crate::server`).

pub mod session;
pub mod xclient;

pub use session::Session;

use std::net::IpAddr;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::filter::Filter;
use crate::relay::Relay;

/// Everything a proxy session needs, built once at start-up and shared by all sessions.
pub struct Services {
    pub config: Config,
    pub relay: Arc<Relay>,
    pub filter: Arc<Filter>,
    pub tls: Option<TlsAcceptor>,
    /// `[server] trusted_proxies`: who may name the real client (PROXY header, XCLIENT).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Services {
    /// Whether `ip` may tell us who the real client is (`[server] trusted_proxies`).
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        crate::config::in_networks(&self.trusted_proxies, ip)
    }
}
