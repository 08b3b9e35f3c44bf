//! A real DNS server for the tests: a private dnsmasq (package dnsmasq-base) on
//! 127.0.0.1:<free port>, serving the records a test gives it and NXDOMAIN for any other
//! name under `.test`; killed on drop.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Dns {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Dns {
    /// Starts dnsmasq with `records` (dnsmasq.conf lines: `txt-record=…`, `host-record=…`,
    /// `ptr-record=…`); the whole `.test` TLD is local.
    pub fn start(records: &str) -> Dns {
        let dnsmasq = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect(
                "dnsmasq is not installed: apt-get install dnsmasq-base (scripts/test.sh does)",
            );
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            // Undefined names (e.g. DMARC's tree walk up to _dmarc.test) get NXDOMAIN, not
            // REFUSED.
            let conf = format!("local=/test/\n{records}");
            let conf_path = dir.path().join("dnsmasq.conf");
            std::fs::write(&conf_path, conf).expect("write dnsmasq.conf");
            let child = Command::new(dnsmasq)
                .arg(format!("--port={port}"))
                .args([
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    "--keep-in-foreground",
                    "--log-facility=-",
                    "--user=root",
                    "--pid-file=",
                ])
                .arg(format!("--conf-file={}", conf_path.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn dnsmasq");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut dns = Dns {
                child,
                addr,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return dns;
                }
                if let Ok(Some(_)) = dns.child.try_wait() {
                    break; // port taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("dnsmasq did not start");
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    udp.local_addr().expect("addr").port()
}
