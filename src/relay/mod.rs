//! Where accepted mail goes: the upstream MTA over SMTP, or the embedded Maildir.
//!
//! The proxy contract, as the session sees it through `RelaySession`:
//! - MAIL and each RCPT are forwarded as they arrive; the upstream's reply is the client's
//!   reply, so recipient validation stays the MTA's.
//! - The message is sent only after the filter accepted it; the upstream's final reply is the
//!   client's reply. The client gets 250 only when the upstream said 250 for that message.
//! - Any failure talking to the upstream (refused, timeout, connection lost) becomes a 451
//!   4.4.x and the upstream transaction is dropped; the next MAIL reconnects. An upstream 421
//!   becomes a 451 (it closes the upstream connection, not the client's).

pub mod maildir;
pub mod received;
pub mod tls;
pub mod upstream;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::envelope::{ClientInfo, Envelope};
use crate::metrics::{metrics, reply_class};
use crate::smtp::command::{MailFrom, RcptTo};
use crate::smtp::reply::{self, Reply};
use maildir::Maildir;
use upstream::{UpstreamConnection, UpstreamError, UpstreamSettings};

/// The configured destination, shared by all sessions.
pub enum Relay {
    Maildir(Maildir),
    Smtp(SmtpRelay),
}

impl Relay {
    /// A short description for the start-up log.
    pub fn describe(&self) -> String {
        match self {
            Relay::Maildir(m) => format!("maildir {}", m.root().display()),
            Relay::Smtp(s) => format!("smtp://{}", s.settings.address),
        }
    }
}

/// The upstream MTA and a small pool of idle connections to it.
///
/// A client session that ends leaves its upstream connection here (outside any transaction);
/// the next session takes it instead of connecting, greeting and saying EHLO again, and
/// re-sends XCLIENT for its own client. Idle connections older than `pool_idle` are closed.
pub struct SmtpRelay {
    pub settings: Arc<UpstreamSettings>,
    pool: Mutex<Vec<(UpstreamConnection, Instant)>>,
    pool_size: usize,
    pool_idle: Duration,
}

impl SmtpRelay {
    pub fn new(
        settings: Arc<UpstreamSettings>,
        pool_size: usize,
        pool_idle: Duration,
    ) -> SmtpRelay {
        SmtpRelay {
            settings,
            pool: Mutex::new(Vec::new()),
            pool_size,
            pool_idle,
        }
    }

    /// The most recently parked connection that is still fresh (stale ones are closed).
    fn take_idle(&self) -> Option<UpstreamConnection> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let stale = self.take_stale(&mut pool);
        let fresh = pool.pop().map(|(conn, _)| conn);
        drop(pool);
        close_politely(stale);
        fresh
    }

    /// Removes the parked connections idle for `pool_idle` or longer.
    fn take_stale(&self, pool: &mut Vec<(UpstreamConnection, Instant)>) -> Vec<UpstreamConnection> {
        let now = Instant::now();
        let (stale, fresh): (Vec<_>, Vec<_>) = std::mem::take(pool)
            .into_iter()
            .partition(|(_, since)| now.duration_since(*since) >= self.pool_idle);
        *pool = fresh;
        stale.into_iter().map(|(conn, _)| conn).collect()
    }

    /// Closes idle connections on time, with QUIT, so the upstream never times them out itself
    /// (Postfix logs each as `timeout after …`). Runs until the relay is dropped.
    pub fn spawn_reaper(relay: &Arc<Relay>) {
        let Relay::Smtp(smtp) = &**relay else {
            return;
        };
        let every = (smtp.pool_idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let weak = Arc::downgrade(relay);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(relay) = weak.upgrade() else { return };
                let Relay::Smtp(smtp) = &*relay else { return };
                let stale = {
                    let mut pool = smtp.pool.lock().unwrap_or_else(|p| p.into_inner());
                    smtp.take_stale(&mut pool)
                };
                for conn in stale {
                    conn.quit().await;
                }
            }
        });
    }

    /// Parks a connection that is outside any transaction; gives it back when the pool is full.
    fn park(&self, conn: UpstreamConnection) -> Option<UpstreamConnection> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() >= self.pool_size {
            return Some(conn);
        }
        pool.push((conn, Instant::now()));
        None
    }
}

/// Says QUIT on each connection in the background (we may be holding a lock).
fn close_politely(conns: Vec<UpstreamConnection>) {
    if conns.is_empty() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(async move {
                for conn in conns {
                    conn.quit().await;
                }
            });
        }
        Err(_) => drop(conns),
    }
}

/// One client session's view of the relay: at most one upstream connection, reused for the
/// session's transactions.
pub struct RelaySession {
    relay: Arc<Relay>,
    conn: Option<UpstreamConnection>,
    transaction_open: bool,
    /// Set when the last delivery failed for lack of an answer (connection lost, disk error)
    /// rather than by a reply: for `mailwarden_upstream_transactions_total{result="error"}`.
    lost: bool,
}

impl RelaySession {
    pub fn new(relay: Arc<Relay>) -> RelaySession {
        RelaySession {
            relay,
            conn: None,
            transaction_open: false,
            lost: false,
        }
    }

    /// Whether the upstream still holds the transaction the session started. When this turns
    /// false after an error, the session must forget its transaction too.
    pub fn transaction_open(&self) -> bool {
        self.transaction_open
    }

    /// Starts a transaction upstream. A 2xx reply means it is open.
    pub async fn mail(&mut self, client: &ClientInfo, mail: &MailFrom) -> Reply {
        let smtp = match &*self.relay {
            Relay::Maildir(_) => {
                self.transaction_open = true;
                return reply::sender_ok();
            }
            Relay::Smtp(smtp) => smtp,
        };
        let line = mail.to_line();
        // A reused connection (ours, or one from the pool) may have been closed by the
        // upstream while idle: then try the next one, and finally a fresh connection. Nothing
        // was accepted yet, so retrying cannot duplicate anything.
        for _ in 0..3 {
            let (mut conn, reused) = match self.conn.take().or_else(|| smtp.take_idle()) {
                Some(conn) => (conn, true),
                None => match UpstreamConnection::open(smtp.settings.clone(), client).await {
                    Ok(conn) => (conn, false),
                    Err(e) => {
                        metrics().upstream_connect_errors.inc();
                        return refusal_reply(&smtp.settings.address, e);
                    }
                },
            };
            let result = match conn.introduce_if_needed(client).await {
                Ok(()) => conn.mail(client, &line).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(r) if reused && r.code() == 421 => {
                    tracing::debug!(reply = %r, "reused upstream connection was closing; trying another");
                }
                Ok(r) => {
                    count_reply("mail", &r);
                    self.conn = Some(conn);
                    let r = self.absorb_421(r);
                    self.transaction_open = r.is_positive();
                    return r;
                }
                Err(e) if reused => {
                    tracing::debug!(error = %e, "reused upstream connection failed before MAIL was accepted; trying another");
                }
                Err(e) => {
                    tracing::warn!(upstream = %smtp.settings.address, error = %e, "upstream failed at MAIL");
                    return reply::upstream_lost();
                }
            }
        }
        reply::upstream_lost()
    }

    /// Adds a recipient upstream. A 2xx reply means the upstream accepted it.
    pub async fn rcpt(&mut self, rcpt: &RcptTo) -> Reply {
        if matches!(&*self.relay, Relay::Maildir(_)) {
            return reply::recipient_ok();
        }
        let Some(conn) = self.conn.as_mut() else {
            self.transaction_open = false;
            return reply::upstream_lost();
        };
        match conn.command(&rcpt.to_line(), "RCPT").await {
            Ok(r) => {
                count_reply("rcpt", &r);
                self.absorb_421(r)
            }
            Err(e) => self.lose(e, "RCPT"),
        }
    }

    /// Delivers the message (filter headers already prepended). Ends the transaction.
    pub async fn data(&mut self, envelope: &Envelope, message: Vec<u8>) -> Reply {
        let started = Instant::now();
        let r = self.deliver(envelope, message).await;
        let m = metrics();
        m.upstream_duration.observe(started.elapsed().as_secs_f64());
        let result = match r.code() / 100 {
            2 => "accepted",
            4 if self.lost => "error",
            4 => "tempfail",
            _ => "rejected",
        };
        m.upstream_transactions.with_label_values(&[result]).inc();
        r
    }

    async fn deliver(&mut self, envelope: &Envelope, message: Vec<u8>) -> Reply {
        self.transaction_open = false;
        self.lost = false;
        match &*self.relay {
            Relay::Maildir(_) => {
                let relay = self.relay.clone();
                let sender = envelope.mail_from.address.clone();
                let delivered = tokio::task::spawn_blocking(move || match &*relay {
                    Relay::Maildir(md) => md.deliver(&sender, &message),
                    Relay::Smtp(_) => Err(std::io::Error::other("not a maildir")),
                })
                .await;
                match delivered {
                    Ok(Ok(file)) => {
                        tracing::debug!(id = %envelope.id, file = %file, "written to maildir");
                        reply::accepted(&envelope.id)
                    }
                    Ok(Err(e)) => {
                        tracing::error!(id = %envelope.id, error = %e, "maildir delivery failed; client told to retry");
                        self.lost = true;
                        reply::local_error()
                    }
                    Err(e) => {
                        tracing::error!(id = %envelope.id, error = %e, "maildir delivery task failed");
                        self.lost = true;
                        reply::local_error()
                    }
                }
            }
            Relay::Smtp(_) => {
                let Some(conn) = self.conn.as_mut() else {
                    self.lost = true;
                    return reply::upstream_lost();
                };
                match conn.send_message(&message).await {
                    Ok(r) => {
                        count_reply("data", &r);
                        self.absorb_421(r)
                    }
                    Err(e) => {
                        tracing::warn!(
                            id = %envelope.id,
                            "no final reply from upstream after sending the message; the client is told to retry (the upstream may have kept a copy)"
                        );
                        self.lose(e, "end of data")
                    }
                }
            }
        }
    }

    /// Aborts the transaction upstream (client RSET, EHLO, or a refused message).
    pub async fn rset(&mut self) {
        if !std::mem::take(&mut self.transaction_open) {
            return;
        }
        if let Some(conn) = self.conn.as_mut()
            && let Err(e) = conn.rset().await
        {
            tracing::debug!(error = %e, "upstream RSET failed; dropping the connection");
            self.conn = None;
        }
    }

    /// Ends the session's use of the upstream: the connection goes back to the pool when it is
    /// clean (no transaction open), else it is closed politely.
    pub async fn quit(&mut self) {
        self.rset().await;
        let Some(conn) = self.conn.take() else { return };
        let conn = match &*self.relay {
            Relay::Smtp(smtp) => match smtp.park(conn) {
                None => return,
                Some(conn) => conn,
            },
            Relay::Maildir(_) => conn,
        };
        conn.quit().await;
    }

    fn lose(&mut self, e: UpstreamError, stage: &str) -> Reply {
        tracing::warn!(error = %e, stage, "upstream connection lost");
        self.lost = true;
        self.conn = None;
        self.transaction_open = false;
        reply::upstream_lost()
    }

    /// An upstream 421 closes the upstream connection; our client gets it as a 451.
    fn absorb_421(&mut self, r: Reply) -> Reply {
        if r.code() != 421 {
            return r;
        }
        self.conn = None;
        self.transaction_open = false;
        Reply::from_lines(451, r.lines().to_vec())
    }
}

/// Counts an upstream reply by stage and class.
fn count_reply(stage: &str, r: &Reply) {
    metrics()
        .upstream_replies
        .with_label_values(&[stage, reply_class(r.code())])
        .inc();
}

/// The client's reply when no upstream session could be set up.
fn refusal_reply(address: &str, e: UpstreamError) -> Reply {
    match e {
        UpstreamError::XclientMissing | UpstreamError::Refused("XCLIENT", _) => {
            tracing::error!(upstream = %address, error = %e, "upstream misconfigured for this proxy");
            reply::upstream_misconfigured()
        }
        e => {
            tracing::warn!(upstream = %address, error = %e, "upstream unavailable");
            reply::upstream_unavailable()
        }
    }
}
