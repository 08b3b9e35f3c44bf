//! The envelope: who connected, what they said in HELO, MAIL and RCPT — everything about a
//! message that is not in the message itself. Every stage after the SMTP session (filter,
//! relay, logs) reads it; none of them sees a socket.

use std::net::SocketAddr;

use crate::smtp::command::{MailFrom, RcptTo};

/// The connected client, as the session knows it.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client's address and port.
    pub addr: SocketAddr,
    /// Our own address the client connected to.
    pub local: SocketAddr,
    /// The EHLO/HELO argument (validated printable word), once given.
    pub helo: Option<String>,
    /// Whether the client used EHLO (ESMTP) rather than HELO.
    pub esmtp: bool,
    /// TLS protocol version after STARTTLS, e.g. "TLSv1.3".
    pub tls: Option<String>,
    /// The verified host name (FCrDNS: a PTR name that resolves back to `addr`); None until
    /// looked up, or when there is none (`filter::rdns`).
    pub name: Option<String>,
    /// The first PTR name of `addr`, unverified; None until looked up, or when there is none.
    pub reverse_name: Option<String>,
    /// The names are missing because the lookup failed temporarily (timeout, SERVFAIL): the
    /// upstream is told `[TEMPUNAVAIL]`, so its hostname restrictions answer 4xx, not 5xx.
    pub names_temporary: bool,
    /// The authenticated user (SMTP AUTH, or the MTA's `{auth_authen}` through the milter);
    /// None for a client that did not authenticate.
    pub auth: Option<String>,
}

impl ClientInfo {
    /// A client that has just connected from `addr` to our `local` address: nothing said yet,
    /// no TLS, names not looked up.
    pub fn connected(addr: SocketAddr, local: SocketAddr) -> ClientInfo {
        ClientInfo {
            addr,
            local,
            helo: None,
            esmtp: false,
            tls: None,
            name: None,
            reverse_name: None,
            names_temporary: false,
            auth: None,
        }
    }

    /// Records the outcome of the connect-time name lookup.
    pub fn set_names(&mut self, names: ClientNames) {
        self.name = names.name;
        self.reverse_name = names.reverse_name;
        self.names_temporary = names.temporary;
    }

    /// The names as the lookup gave them (all unknown before it ran).
    pub fn names(&self) -> ClientNames {
        ClientNames {
            reverse_name: self.reverse_name.clone(),
            name: self.name.clone(),
            temporary: self.names_temporary,
        }
    }

    /// Forgets the names (the address changed, e.g. by inbound XCLIENT/XFORWARD).
    pub fn clear_names(&mut self) {
        self.set_names(ClientNames::default());
    }

    /// The address in SMTP address-literal form: `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
    pub fn address_literal(&self) -> String {
        match self.addr.ip() {
            std::net::IpAddr::V4(ip) => format!("[{ip}]"),
            std::net::IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => format!("[{v4}]"),
                None => format!("[IPv6:{ip}]"),
            },
        }
    }

    /// The protocol name for the Received header's `with` clause (RFC 3848, RFC 6531 §3.7.4).
    pub fn protocol(&self, smtputf8: bool) -> &'static str {
        match (smtputf8, self.esmtp, self.tls.is_some()) {
            (true, _, true) => "UTF8SMTPS",
            (true, _, false) => "UTF8SMTP",
            (false, true, true) => "ESMTPS",
            (false, true, false) => "ESMTP",
            (false, false, true) => "SMTPS",
            (false, false, false) => "SMTP",
        }
    }
}

/// One message's envelope, complete at end of data.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Our id for this message, in logs and the Received header.
    pub id: String,
    pub client: ClientInfo,
    pub mail_from: MailFrom,
    /// Recipients the upstream accepted, in order.
    pub recipients: Vec<RcptTo>,
}

#[cfg(test)]
impl Envelope {
    /// A sample envelope for unit tests: client 192.0.2.7 (`client.example`, ESMTP), sender
    /// `a@example.test`, the given id and recipients.
    pub fn example(id: &str, rcpts: &[&str]) -> Envelope {
        use crate::smtp::command::MailParams;
        Envelope {
            id: id.into(),
            client: ClientInfo {
                helo: Some("client.example".into()),
                esmtp: true,
                ..ClientInfo::connected(
                    SocketAddr::from(([192, 0, 2, 7], 40000)),
                    SocketAddr::from(([127, 0, 0, 1], 25)),
                )
            },
            mail_from: MailFrom {
                address: "a@example.test".into(),
                params: MailParams::default(),
            },
            recipients: rcpts
                .iter()
                .map(|r| RcptTo {
                    address: r.to_string(),
                    notify: None,
                    orcpt: None,
                })
                .collect(),
        }
    }
}

// The names of a client as the connect stage looked them up (`filter::rdns`): what the
// relay passes on with XCLIENT and the rules read.

/// XCLIENT/XFORWARD value for a permanently unknown name (Postfix XCLIENT_README).
pub const UNAVAILABLE: &str = "[UNAVAILABLE]";
/// XCLIENT value for a name unknown because of a temporary lookup failure.
pub const TEMPUNAVAIL: &str = "[TEMPUNAVAIL]";

/// What the lookup found for one client address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientNames {
    /// The first valid PTR name, not verified (Postfix's `reverse_client_name`).
    pub reverse_name: Option<String>,
    /// A PTR name whose A/AAAA records contain the address: FCrDNS (Postfix's `client_name`).
    pub name: Option<String>,
    /// `name` (or `reverse_name`) is missing because of a timeout or server failure, not
    /// because DNS said so: the client is "unknown" for now, not for good.
    pub temporary: bool,
}

impl ClientNames {
    /// The names of a loopback client.
    pub fn localhost() -> ClientNames {
        ClientNames {
            reverse_name: Some("localhost".into()),
            name: Some("localhost".into()),
            temporary: false,
        }
    }

    /// The XCLIENT `NAME=` value (before xtext): the verified name, `[TEMPUNAVAIL]` after a
    /// temporary failure, else `[UNAVAILABLE]`.
    pub fn xclient_name(&self) -> &str {
        unknown_or(self.name.as_deref(), self.temporary)
    }

    /// The XCLIENT `REVERSE_NAME=` value (before xtext), by the same rule for the PTR name.
    pub fn xclient_reverse_name(&self) -> &str {
        unknown_or(self.reverse_name.as_deref(), self.temporary)
    }
}

fn unknown_or(name: Option<&str>, temporary: bool) -> &str {
    match (name, temporary) {
        (Some(name), _) => name,
        (None, true) => TEMPUNAVAIL,
        (None, false) => UNAVAILABLE,
    }
}
