//! The server: listeners, session limits, and graceful shutdown.
//!
//! Each accepted connection either gets a session task, or — over `max_sessions` or
//! `max_sessions_per_ip` — a `421 4.7.0` greeting and a close. On SIGTERM/SIGINT the listeners
//! stop, idle sessions get `421 4.3.2`, sessions inside a transaction may finish it (up to the
//! grace period), then the process exits. Nothing is ever acknowledged that was not relayed.

pub mod health;
pub mod http;
pub mod limits;
pub mod proxy_protocol;
pub mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::config::{Config, UpstreamTarget};
use crate::envelope::ClientInfo;
use crate::filter::Filter;
use crate::filter::classifier::Classifier;
use crate::proxy::{self, Session};
use crate::relay::maildir::Maildir;
use crate::relay::upstream::UpstreamSettings;
use crate::relay::{Relay, SmtpRelay};
use crate::shutdown;
use crate::smtp::reply;

/// After the grace period, how long sessions may take to send their 421 or finish an
/// upstream exchange already under way.
const STOP_WAIT: Duration = Duration::from_secs(15);

/// Everything this node runs, built once at start-up and shared: the filter every front end
/// drives, and the proxy's services when `[server] listen` names any address.
pub struct Services {
    pub config: Config,
    pub filter: Arc<Filter>,
    /// The proxy front end's services; `None` on a milter-only node (`[server] listen = []`).
    pub proxy: Option<Arc<proxy::Services>>,
}

impl Services {
    /// The relay to the upstream, when the proxy runs.
    pub fn relay(&self) -> Option<&Relay> {
        self.proxy.as_ref().map(|p| &*p.relay)
    }
}

impl Services {
    /// Builds the services from a validated config; errors say what to fix.
    pub fn new(config: Config) -> anyhow::Result<Services> {
        // Every part is checked even when an earlier one failed, so the admin sees all the
        // problems at once, one per line.
        let mut problems: Vec<String> = Vec::new();
        // A milter-only node (`[server] listen = []`) relays nothing: no upstream, no Maildir.
        let proxied = !config.server.listen.is_empty();
        let relay = if proxied {
            build_relay(&config, &mut problems)?
        } else {
            None
        };
        let tls = match config
            .tls
            .as_ref()
            .filter(|_| proxied)
            .map(tls::acceptor)
            .transpose()
        {
            Ok(tls) => tls,
            Err(e) => {
                problems.push(format!("{e:#}"));
                None
            }
        };
        let mut filter = match Filter::load(&config) {
            Ok(filter) => Some(filter),
            Err(errors) => {
                problems.push(format!(
                    "the rules do not load (`mailwarden rules check` shows every problem):\n    {}",
                    errors.join("\n    ")
                ));
                None
            }
        };
        let trusted_proxies = config
            .server
            .trusted_proxy_nets()
            .map_err(|e| anyhow::anyhow!("server.trusted_proxies: {e}"))?;
        attach_classifier(&config, filter.as_mut(), &mut problems);
        attach_state(&config, filter.as_mut(), &mut problems);
        match (relay, filter) {
            (relay, Some(filter)) if problems.is_empty() && (relay.is_some() || !proxied) => {
                let filter = Arc::new(filter);
                let proxy = relay.map(|relay| {
                    Arc::new(proxy::Services {
                        config: config.clone(),
                        relay: Arc::new(relay),
                        filter: filter.clone(),
                        tls,
                        trusted_proxies,
                    })
                });
                Ok(Services {
                    config,
                    filter,
                    proxy,
                })
            }
            _ => Err(anyhow::anyhow!(
                "cannot start ({} problem{}):\n  {}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                problems.join("\n  ")
            )),
        }
    }
}

/// The proxy's relay: the upstream MTA or the embedded Maildir (`[upstream] url`).
fn build_relay(config: &Config, problems: &mut Vec<String>) -> anyhow::Result<Option<Relay>> {
    Ok(match config.upstream_target()? {
        UpstreamTarget::Maildir(dir) => match Maildir::open(&dir, &config.server.hostname) {
            Ok(md) => Some(Relay::Maildir(md)),
            Err(e) => {
                problems.push(format!("upstream.url: the Maildir cannot be used: {e:#}"));
                None
            }
        },
        UpstreamTarget::Smtp(address) => {
            let u = &config.upstream;
            let settings = Arc::new(UpstreamSettings {
                address,
                helo_name: config.upstream_helo().to_string(),
                xclient: u.xclient,
                xforward: u.xforward,
                starttls: u.starttls,
                chunking: u.chunking,
                connect_timeout: Duration::from_secs(u.connect_timeout_secs),
                command_timeout: Duration::from_secs(u.command_timeout_secs),
                data_timeout: Duration::from_secs(u.data_timeout_secs),
            });
            let idle = Duration::from_secs(u.pool_idle_secs);
            Some(Relay::Smtp(SmtpRelay::new(settings, u.pool_size, idle)))
        }
    })
}

/// Opens the classifier's store and lets it vote. The store is created on first start — only
/// when the start goes on (a refused start leaves nothing behind); an existing one is checked
/// either way, so a damaged store is reported with the other problems.
fn attach_classifier(config: &Config, filter: Option<&mut Filter>, problems: &mut Vec<String>) {
    if !config.classifier.enabled {
        tracing::info!("classifier off ([classifier] enabled = false)");
        return;
    }
    // A Redis model is always "there" (an empty one is untrained; the first learn makes it).
    let store_exists = config.classifier.uses_redis() || config.classifier.path().exists();
    if !(store_exists || problems.is_empty() && filter.is_some()) {
        return;
    }
    match Classifier::open_with(&config.classifier, &config.state, true) {
        Ok(c) => {
            let c = Arc::new(c);
            let (spam, ham) = c.counts();
            tracing::info!(store = %config.classifier.store, spam, ham, min_learns = config.classifier.min_learns, autolearn = config.classifier.autolearn, "classifier model loaded");
            if let Some(f) = filter {
                f.attach_classifier(c);
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
}

/// Opens the state store when greylisting or a rate limit needs it. A damaged embedded file
/// stops the start (with what to do); Redis is connected on first use, so a node starts
/// while Redis is down and answers per `[state] on_error` until it is back.
fn attach_state(config: &Config, filter: Option<&mut Filter>, problems: &mut Vec<String>) {
    if !Filter::needs_state(config) {
        return;
    }
    match crate::filter::open_state(&config.state) {
        Ok(state) => {
            tracing::info!(store = %state.describe(), greylist = config.greylist.enabled, ratelimits = config.ratelimit.len(), on_error = config.state.on_error.as_str(), "state store opened");
            if let Some(f) = filter {
                f.attach_state(Arc::new(state), config);
            }
        }
        Err(e) => problems.push(format!("[state]: {e}")),
    }
}

/// Counts sessions, in total and per client address.
struct Limits {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A counted session; dropping it frees the slot.
struct Slot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Limits {
    /// Takes a slot for a session from `ip`; `per_ip_limit = false` for a trusted proxy,
    /// which speaks for many clients.
    fn acquire(self: &Arc<Self>, ip: IpAddr, per_ip_limit: bool) -> Result<Slot, &'static str> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *guard;
        if *total >= self.max_total {
            return Err("total");
        }
        let n = per_ip.entry(ip).or_insert(0);
        if per_ip_limit && *n >= self.max_per_ip {
            return Err("per-ip");
        }
        *n += 1;
        *total += 1;
        Ok(Slot {
            limits: self.clone(),
            ip,
        })
    }

    fn active(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self.limits.state.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Binds the listeners and serves until SIGTERM/SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let services = Arc::new(Services::new(config)?);
    if let Some(proxy) = &services.proxy {
        crate::relay::SmtpRelay::spawn_reaper(&proxy.relay);
    }
    // The classifier's refresh and autolearn threads, once the start goes on.
    if let Some(c) = services.filter.classifier() {
        c.start();
    }
    let server = &services.config.server;
    limits::raise_file_limit(server.max_sessions);
    // Before the listeners: once we say "listening", SIGTERM must drain, not kill us.
    let signals = shutdown::Signals::register();
    // Before the listeners: once we say "listening", a SIGHUP must reload, not kill us.
    crate::filter::reload::spawn(services.filter.clone(), services.config.rules.watch);
    let mut listeners = Vec::new();
    for addr in &server.listen {
        let listener = bind(*addr).with_context(|| {
            format!("server.listen: cannot listen on {addr} (is another mail server using that port? choose another address in server.listen)")
        })?;
        let bound = listener.local_addr().context("listener address")?;
        tracing::info!("listening on {bound}");
        listeners.push(listener);
    }
    let (trigger, shutdown_rx) = shutdown::channel();
    let milters = start_milters(&services, &shutdown_rx).await?;
    tracing::info!(
        hostname = %server.hostname,
        upstream = %services.relay().map_or("none (milter only)".to_string(), Relay::describe),
        starttls = services.proxy.as_ref().is_some_and(|p| p.tls.is_some()),
        bare_newline = ?server.bare_newline,
        "mailwarden {} ready",
        env!("CARGO_PKG_VERSION")
    );
    let status = services.filter.status();
    tracing::info!(
        rules = status.rules,
        skipped = status.skipped,
        "rules loaded"
    );
    crate::metrics::metrics().rules_status(status.ok, status.rules, status.skipped, status.at);
    crate::metrics::metrics().set_rules(services.filter.engine().rules.rule_names());
    if let Some(addr) = services
        .config
        .metrics
        .address()
        .map_err(|e| anyhow::anyhow!("metrics.listen: {e}"))?
    {
        let listener = bind(addr).with_context(|| {
            format!("metrics.listen: cannot listen on {addr} (another exporter on that port? choose another address, or \"\" to turn the endpoint off)")
        })?;
        let bound = listener.local_addr().context("metrics listener address")?;
        tracing::info!("metrics endpoint on {bound} (/metrics, /healthz, /readyz)");
        tokio::spawn(http::serve(listener, services.clone()));
    } else {
        tracing::info!("metrics endpoint off ([metrics] listen = \"\")");
    }
    if let Some(Relay::Smtp(smtp)) = services.relay() {
        tokio::spawn(probe_upstream(smtp.settings.clone()));
    }
    let limits = Arc::new(Limits {
        max_total: server.max_sessions,
        max_per_ip: server.max_sessions_per_ip,
        state: Mutex::new((0, HashMap::new())),
    });
    let mut accept_tasks = Vec::new();
    // The proxy's services exist exactly when `[server] listen` names addresses.
    if let Some(proxy) = &services.proxy {
        for listener in listeners {
            accept_tasks.push(tokio::spawn(accept_loop(
                listener,
                proxy.clone(),
                limits.clone(),
                shutdown_rx.clone(),
            )));
        }
    }
    signals.wait().await;
    let grace = services.config.server.shutdown_grace.0;
    tracing::info!(
        active = limits.active(),
        grace = ?grace,
        "shutting down: no new connections, finishing transactions in progress"
    );
    trigger.drain();
    for task in accept_tasks {
        task.abort();
    }
    let wait_for_sessions = |limit: Duration| {
        let limits = limits.clone();
        async move {
            let deadline = tokio::time::Instant::now() + limit;
            while limits.active() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            limits.active()
        }
    };
    let left = wait_for_sessions(grace).await;
    if left > 0 {
        tracing::warn!(
            sessions = left,
            "grace period over; telling the clients still connected 421 (nothing unacknowledged is lost: they retry)"
        );
        trigger.stop();
        let left = wait_for_sessions(STOP_WAIT).await;
        if left > 0 {
            tracing::warn!(sessions = left, "closing sessions that did not finish");
        }
    }
    // Milter connections end when the MTA closes them (its SMTP session is over), or after
    // the grace period.
    for task in milters {
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Binds every `[milter] listen` address and serves the MTA's milter connections on them
/// until the drain signal; each then waits up to `[server] shutdown_grace` for its open
/// connections.
async fn start_milters(
    services: &Arc<Services>,
    shutdown: &shutdown::Shutdown,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let config = &services.config;
    let handler = Arc::new(crate::milter::handler::PipelineHandler::new(
        services.filter.clone(),
    ));
    let mut tasks = Vec::new();
    for address in &config.milter.listen {
        let listener = crate::milter::bind(address).await.with_context(|| {
            format!("milter.listen: cannot listen on {address} (another milter on that port, or a directory Postfix cannot reach? choose another address in milter.listen)")
        })?;
        // The bound address (port 0 picks one), and how Postfix's smtpd_milters names it.
        let (bound, postfix) = match listener.local_addr() {
            Some(addr) => (addr.to_string(), format!("inet:{addr}")),
            None => (
                address.trim_start_matches("unix:").to_string(),
                address.clone(),
            ),
        };
        tracing::info!("milter listening on {bound} (Postfix: smtpd_milters = {postfix})");
        let settings = crate::milter::Settings {
            progress_interval: config.milter.progress_interval(),
            max_message_size: config.server.max_message_size,
            stop_grace: config.server.shutdown_grace.0,
        };
        let mut draining = shutdown.draining.clone();
        let stop = async move {
            let _ = draining.wait_for(|d| *d).await;
        };
        tasks.push(tokio::spawn(crate::milter::serve(
            listener,
            handler.clone(),
            settings,
            stop,
        )));
    }
    Ok(tasks)
}

/// Tells the admin at start-up if the upstream cannot be reached (not fatal: the MTA may
/// start later; until then clients get 451 and retry).
async fn probe_upstream(settings: Arc<UpstreamSettings>) {
    // The same check as /readyz, with the connect timeout the relay itself uses.
    match health::upstream_greets(&settings.address, settings.connect_timeout).await {
        Ok(_) => tracing::info!(upstream = %settings.address, "upstream reachable"),
        Err(e) => tracing::warn!(
            upstream = %settings.address,
            error = %e,
            "upstream not answering now; clients get 451 4.4.1 until it does"
        ),
    }
}

/// Binds one listener. IPv6 sockets are IPv6-only, so `"0.0.0.0:25"` and `"[::]:25"` can be
/// listed together (the usual dual-stack setup) without colliding.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(
    listener: TcpListener,
    services: Arc<proxy::Services>,
    limits: Arc<Limits>,
    shutdown: shutdown::Shutdown,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let services = services.clone();
        let per_ip_limit = !services.is_trusted_proxy(peer.ip());
        let m = crate::metrics::metrics();
        match limits.acquire(peer.ip(), per_ip_limit) {
            Ok(slot) => {
                let shutdown = shutdown.clone();
                m.connections_accepted.inc();
                m.sessions_active.inc();
                tokio::spawn(async move {
                    run_session(stream, peer, services, shutdown).await;
                    crate::metrics::metrics().sessions_active.dec();
                    drop(slot);
                });
            }
            Err(which) => {
                let reason = if which == "per-ip" {
                    "max_sessions_per_ip"
                } else {
                    "max_sessions"
                };
                m.connections_refused.with_label_values(&[reason]).inc();
                tracing::warn!(client = %peer, limit = which, "session limit reached; refusing connection");
                tokio::spawn(refuse(stream, services, which));
            }
        }
    }
}

async fn run_session(
    mut stream: TcpStream,
    peer: SocketAddr,
    services: Arc<proxy::Services>,
    shutdown: shutdown::Shutdown,
) {
    let mut local = stream.local_addr().unwrap_or(peer);
    let mut addr = peer;
    if services.config.server.proxy_protocol && services.is_trusted_proxy(peer.ip()) {
        match proxy_protocol::read_header(&mut stream).await {
            Ok(proxy_protocol::Header::Proxied {
                source,
                destination,
            }) => {
                tracing::debug!(proxy = %peer, client = %source, "PROXY protocol header");
                addr = source;
                local = destination;
            }
            Ok(proxy_protocol::Header::Local) => {}
            Err(e) => {
                // The specification: drop the connection, say nothing (the peer is a proxy,
                // not an SMTP client).
                crate::metrics::metrics()
                    .connections_refused
                    .with_label_values(&["proxy_header"])
                    .inc();
                tracing::warn!(proxy = %peer, error = %e, "PROXY protocol header refused; closing the connection (is the load balancer configured to send it? see [server] proxy_protocol)");
                return;
            }
        }
    }
    let client = ClientInfo::connected(addr, local);
    tracing::debug!(client = %addr, "connect");
    Session::new(Box::new(stream), client, services, shutdown)
        .run()
        .await;
    tracing::debug!(client = %addr, "disconnect");
}

/// Greets an over-limit client with 421 and closes (RFC 5321 §3.1).
async fn refuse(mut stream: TcpStream, services: Arc<proxy::Services>, which: &'static str) {
    let hostname = &services.config.server.hostname;
    let r = if which == "per-ip" {
        reply::too_many_sessions_from_ip(hostname)
    } else {
        reply::too_many_sessions(hostname)
    };
    let mut out = Vec::new();
    r.write_to(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
