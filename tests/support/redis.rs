//! Private, real Redis servers for the state-store tests (package redis-server): one
//! standalone [`Redis`] on a free loopback port, which a test can stop and start again on the
//! same port, and a 3-master [`RedisCluster`]. Each runs in the foreground with its files and
//! log in a temporary directory, no persistence, and is killed on drop (the log is printed
//! when the test panicked).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{LONG, dump_log, find_program, loopback, wait_until};

fn program(name: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| {
        panic!("{name} is not installed: apt-get install redis-server (it brings redis-cli too)")
    })
}

/// A loopback port below 55535 (a Cluster node's bus port is port + 10000) that nothing
/// listens on, nor on its bus port.
fn free_port() -> u16 {
    loop {
        let port = super::unused_port();
        if port < 55535 && TcpListener::bind(loopback(port + 10000)).is_ok() {
            return port;
        }
    }
}

/// True if the server on `port` answers PING with PONG.
pub fn answers_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&loopback(port), Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// Runs `redis-cli -p <port> <args>` and returns its output (panics when it fails).
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(program("redis-cli"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(
        out.status.success(),
        "redis-cli -p {port} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What kind of server a [`Redis`] runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Standalone,
    ClusterNode,
    /// TLS (self-signed certificate, no client certificates) on this port beside the plain one.
    Tls(u16),
    /// A sentinel monitoring `mymaster` on this port (quorum 1).
    Sentinel(u16),
    /// A replica of the server on this port.
    Replica(u16),
}

/// One redis-server process (standalone, TLS, a Cluster node or a sentinel).
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    kind: Kind,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts a standalone server on a free port.
    pub fn start() -> Redis {
        Redis::start_node(|| Kind::Standalone)
    }

    /// Starts a server that also speaks TLS (see [`Redis::tls_url`]).
    pub fn start_tls() -> Redis {
        Redis::start_node(|| Kind::Tls(free_port()))
    }

    /// Starts a sentinel that monitors `master` as `mymaster`.
    pub fn start_sentinel(master: &Redis) -> Redis {
        let sentinel = Redis::start_node(|| Kind::Sentinel(master.port));
        let known = wait_until(LONG, || {
            let addr = sentinel.cli(&["SENTINEL", "get-master-addr-by-name", "mymaster"]);
            addr.contains(&master.port.to_string()).then_some(())
        });
        assert!(known.is_some(), "the sentinel never named the master");
        sentinel
    }

    /// Starts a replica of `master` and waits until it is in sync.
    pub fn start_replica(master: &Redis) -> Redis {
        let replica = Redis::start_node(|| Kind::Replica(master.port));
        let synced = wait_until(LONG, || {
            let info = replica.cli(&["INFO", "replication"]);
            info.contains("master_link_status:up").then_some(())
        });
        assert!(synced.is_some(), "the replica never synced with its master");
        replica
    }

    fn start_node(kind: impl Fn() -> Kind) -> Redis {
        for _attempt in 0..5 {
            let mut redis = Redis {
                child: None,
                port: free_port(),
                kind: kind(),
                dir: tempfile::tempdir().expect("temp dir"),
            };
            if redis.spawn() {
                return redis;
            }
        }
        panic!("redis-server did not start (5 ports tried)");
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `rediss://127.0.0.1:<tls port>/0` (trust [`Redis::tls_ca`] to verify it).
    pub fn tls_url(&self) -> String {
        match self.kind {
            Kind::Tls(port) => format!("rediss://127.0.0.1:{port}/0"),
            _ => panic!("not started with Redis::start_tls"),
        }
    }

    /// Kills the server (the port is free afterwards).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty (panics when it does not come up).
    pub fn start_again(&mut self) {
        self.stop();
        assert!(
            wait_until(LONG, || self.spawn().then_some(())).is_some(),
            "redis-server did not start again on port {}",
            self.port
        );
    }

    /// `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// One command through the `redis` crate, its reply typed (panics when it fails).
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let client = redis::Client::open(self.url()).expect("client");
        let mut conn = client.get_connection().expect("connect to the test redis");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn)
            .unwrap_or_else(|e| panic!("redis {args:?} on :{}: {e}", self.port))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn args(&self) -> Vec<String> {
        let dir = self.dir.path();
        let mut args: Vec<String> = ["--port", &self.port.to_string(), "--bind", "127.0.0.1"]
            .map(String::from)
            .into();
        args.extend(["--daemonize", "no"].map(String::from));
        args.extend(["--dir".into(), dir.display().to_string()]);
        args.extend(["--logfile".into(), self.log_path().display().to_string()]);
        if !matches!(self.kind, Kind::Sentinel(_)) {
            args.extend(["--save", "", "--appendonly", "no"].map(String::from));
            // A replica syncs at once, not after the default 5 s wait for more replicas.
            args.extend(["--repl-diskless-sync-delay", "0"].map(String::from));
        }
        if let Kind::Replica(master) = self.kind {
            args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
        }
        if self.kind == Kind::ClusterNode {
            args.extend(["--cluster-enabled", "yes", "--cluster-config-file"].map(String::from));
            args.push(dir.join("nodes.conf").display().to_string());
        }
        args
    }

    /// A certificate for 127.0.0.1 signed by a test CA (`ca.pem`, see [`Redis::tls_ca`]) and
    /// its key, as PEM files (webpki does not take a self-signed leaf as its own anchor).
    fn write_certificate(&self) -> (PathBuf, PathBuf) {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let key = rcgen::KeyPair::generate().expect("server key");
        let leaf = rcgen::CertificateParams::new(names)
            .expect("server names")
            .signed_by(&key, &ca, &ca_key)
            .expect("server certificate");
        let dir = self.dir.path();
        std::fs::write(self.tls_ca(), ca.pem()).expect("write ca.pem");
        std::fs::write(dir.join("cert.pem"), leaf.pem()).expect("write cert.pem");
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write key.pem");
        (dir.join("cert.pem"), dir.join("key.pem"))
    }

    /// The CA that signed a TLS server's certificate (PEM), e.g. for `SSL_CERT_FILE`.
    pub fn tls_ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Spawns redis-server and waits until it answers PING; false if it exited (port taken).
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new(program("redis-server"));
        if let Kind::Sentinel(master) = self.kind {
            // A sentinel rewrites its configuration file: it must be its own.
            let conf = self.dir.path().join("sentinel.conf");
            let text = format!("sentinel monitor mymaster 127.0.0.1 {master} 1\n");
            std::fs::write(&conf, text).expect("write sentinel.conf");
            cmd.arg(conf).arg("--sentinel");
        }
        cmd.args(self.args());
        if let Kind::Tls(port) = self.kind {
            let (cert, key) = self.write_certificate();
            cmd.args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let port = self.port;
        let up = wait_until(Duration::from_secs(10), || {
            if answers_ping(port) {
                return Some(true);
            }
            match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(_))) => Some(false),
                _ => None,
            }
        });
        if up != Some(true) {
            self.stop();
            return false;
        }
        true
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            dump_log(&format!("redis-server :{}", self.port), &self.log());
        }
    }
}

/// A Redis Cluster of 3 masters (no replicas) on loopback, every slot served.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<Redis> = (0..3)
            .map(|_| Redis::start_node(|| Kind::ClusterNode))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        cli(nodes[0].port, &args);
        for n in &nodes {
            let ok = wait_until(LONG, || {
                n.cli(&["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
                    .then_some(())
            });
            assert!(
                ok.is_some(),
                "cluster node :{} never reached cluster_state:ok",
                n.port
            );
        }
        RedisCluster { nodes }
    }

    /// The seed URLs, as `StateTarget::Cluster` takes them.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }
}
