//! Inbound XCLIENT and XFORWARD (Postfix's XCLIENT_README, XFORWARD_README): a trusted SMTP
//! proxy in front of mailwarden names the real client.
//!
//! `XCLIENT ADDR=192.0.2.7 PORT=4711 HELO=client.example PROTO=ESMTP` from a host in
//! `[server] trusted_proxies` replaces the session's client address, port and HELO; the
//! session starts over with a fresh `220` greeting, as Postfix does. Everyone else gets
//! `550 5.7.0`, and XCLIENT is advertised in EHLO only to trusted hosts.
//!
//! XFORWARD is what Postfix sends to a before-queue content filter (`smtpd_proxy_filter`):
//! `XFORWARD ADDR=… HELO=…` before MAIL, answered with `250`; the attributes hold for the
//! next transaction only (Postfix resets them at its end).
//!
//! Attribute values are xtext (RFC 3461 §4). `[UNAVAILABLE]` and `[TEMPUNAVAIL]` leave the
//! attribute as it was. NAME, LOGIN, DESTADDR and DESTPORT are accepted (a Postfix-speaking
//! proxy sends them) and, except DESTADDR/DESTPORT, not used: mailwarden does no SMTP AUTH,
//! and looks the client's names up itself (`filter::rdns`); a new ADDR drops the names looked
//! up for the old one.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::envelope::ClientInfo;
use crate::smtp::reply::Reply;

/// The attributes we accept, for the EHLO keyword line (Postfix's order).
pub const EHLO_KEYWORD: &str = "XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT";

/// The XFORWARD attributes we accept, for the EHLO keyword line.
pub const XFORWARD_EHLO_KEYWORD: &str = "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE";

/// Which command the attributes came with: each has its own attribute names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Xclient,
    Xforward,
}

/// What an XCLIENT command asks to change; `None` = leave as it is.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Update {
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
    pub helo: Option<String>,
    pub esmtp: Option<bool>,
    pub dest_addr: Option<IpAddr>,
    pub dest_port: Option<u16>,
}

impl Update {
    /// Adds `later` on top of this update (XFORWARD may come in several commands).
    pub fn merge(&mut self, later: Update) {
        self.addr = later.addr.or(self.addr);
        self.port = later.port.or(self.port);
        self.helo = later.helo.or(self.helo.take());
        self.esmtp = later.esmtp.or(self.esmtp);
        self.dest_addr = later.dest_addr.or(self.dest_addr);
        self.dest_port = later.dest_port.or(self.dest_port);
    }

    /// Applies the update to the session's client.
    pub fn apply(&self, client: &mut ClientInfo) {
        if let Some(ip) = self.addr {
            // The names looked up for the proxy's own address are not the client's.
            if ip != client.addr.ip() {
                client.clear_names();
            }
            client.addr = SocketAddr::new(ip, client.addr.port());
        }
        if let Some(port) = self.port {
            client.addr.set_port(port);
        }
        if let Some(helo) = &self.helo {
            client.helo = Some(helo.clone());
        }
        if let Some(esmtp) = self.esmtp {
            client.esmtp = esmtp;
        }
        if let Some(ip) = self.dest_addr {
            client.local = SocketAddr::new(ip, client.local.port());
        }
        if let Some(port) = self.dest_port {
            client.local.set_port(port);
        }
    }
}

/// Parses the arguments of an XCLIENT command: `name=value` pairs, at least one.
pub fn parse(args: &str) -> Result<Update, Reply> {
    parse_for(Verb::Xclient, args)
}

/// Parses the arguments of XCLIENT or XFORWARD.
pub fn parse_for(verb: Verb, args: &str) -> Result<Update, Reply> {
    let verb_name = match verb {
        Verb::Xclient => "XCLIENT",
        Verb::Xforward => "XFORWARD",
    };
    let bad = |what: String| Reply::new(501, "5.5.4", format!("Bad {verb_name} attribute: {what}"));
    let mut update = Update::default();
    let mut any = false;
    for pair in args.split([' ', '\t']).filter(|s| !s.is_empty()) {
        any = true;
        let (name, raw) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("{pair:?} is not name=value")))?;
        let value = decode_xtext(raw).ok_or_else(|| bad(format!("{name}: value is not xtext")))?;
        if value == "[UNAVAILABLE]" || value == "[TEMPUNAVAIL]" {
            continue;
        }
        match name.to_ascii_uppercase().as_str() {
            "ADDR" => {
                update.addr = Some(parse_addr(&value).ok_or_else(|| bad(format!("ADDR={value}")))?)
            }
            "DESTADDR" | "DESTPORT" | "LOGIN" if verb == Verb::Xforward => {
                return Err(bad(format!("unknown attribute {name}")));
            }
            "IDENT" | "SOURCE" if verb == Verb::Xclient => {
                return Err(bad(format!("unknown attribute {name}")));
            }
            "PORT" => update.port = Some(value.parse().map_err(|_| bad(format!("PORT={value}")))?),
            "DESTADDR" => {
                update.dest_addr =
                    Some(parse_addr(&value).ok_or_else(|| bad(format!("DESTADDR={value}")))?)
            }
            "DESTPORT" => {
                update.dest_port = Some(
                    value
                        .parse()
                        .map_err(|_| bad(format!("DESTPORT={value}")))?,
                )
            }
            "HELO" => {
                if !crate::smtp::command::is_helo_name(&value) {
                    return Err(bad("HELO is not a host name".into()));
                }
                update.helo = Some(value);
            }
            "PROTO" => {
                update.esmtp = Some(match value.to_ascii_uppercase().as_str() {
                    "SMTP" => false,
                    "ESMTP" => true,
                    _ => return Err(bad(format!("PROTO={value} (SMTP or ESMTP)"))),
                })
            }
            "NAME" | "LOGIN" | "REVERSE_NAME" | "IDENT" | "SOURCE" => {}
            _ => return Err(bad(format!("unknown attribute {name}"))),
        }
    }
    if !any {
        return Err(Reply::new(
            501,
            "5.5.4",
            format!("Syntax: {verb_name} attribute=value [attribute=value ...]"),
        ));
    }
    Ok(update)
}

/// An IPv4 address, or an IPv6 address with Postfix's `IPV6:` prefix (or without it).
fn parse_addr(value: &str) -> Option<IpAddr> {
    let v6 = value
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("IPV6:"))
        .map(|_| &value[5..]);
    match v6 {
        Some(rest) => rest.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => value.parse().ok(),
    }
}

/// Decodes xtext (RFC 3461 §4): `+XX` hex escapes, otherwise printable ASCII but `=`.
fn decode_xtext(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'=' => return None,
            c @ 33..=126 => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    // A decoded control character could split a header we write (Received); refuse it.
    if out.iter().any(|c| c.is_ascii_control()) {
        return None;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientInfo {
        ClientInfo {
            helo: Some("proxy.example".into()),
            esmtp: true,
            ..ClientInfo::connected(
                "10.0.0.5:40000".parse().expect("addr"),
                "10.0.0.1:25".parse().expect("addr"),
            )
        }
    }

    #[test]
    fn postfix_style_command_replaces_the_client() {
        let u = parse("NAME=[UNAVAILABLE] ADDR=192.0.2.7 PORT=4711 HELO=a+2Bb.example PROTO=SMTP")
            .expect("valid");
        let mut c = client();
        u.apply(&mut c);
        assert_eq!(c.addr, "192.0.2.7:4711".parse().expect("addr"));
        assert_eq!(c.helo.as_deref(), Some("a+b.example"));
        assert!(!c.esmtp);
        assert_eq!(c.local, "10.0.0.1:25".parse().expect("addr"), "unchanged");
    }

    #[test]
    fn a_new_address_drops_the_names_of_the_old_one() {
        let mut c = client();
        c.set_names(crate::envelope::ClientNames::localhost());
        parse("PORT=4711").expect("valid").apply(&mut c);
        assert_eq!(c.name.as_deref(), Some("localhost"), "same address: kept");
        parse("ADDR=192.0.2.7").expect("valid").apply(&mut c);
        assert_eq!((c.name, c.reverse_name), (None, None));
    }

    #[test]
    fn ipv6_with_and_without_prefix_and_unavailable_values() {
        let u = parse("ADDR=IPV6:2001:db8::7 DESTADDR=2001:db8::1 DESTPORT=25").expect("valid");
        assert_eq!(u.addr, Some("2001:db8::7".parse().expect("ip")));
        assert_eq!(u.dest_addr, Some("2001:db8::1".parse().expect("ip")));
        let u = parse("ADDR=[TEMPUNAVAIL] HELO=[UNAVAILABLE]").expect("valid");
        assert_eq!(u, Update::default());
    }

    #[test]
    fn xforward_has_its_own_attributes_and_merges() {
        let mut u = parse_for(
            Verb::Xforward,
            "NAME=spike.porcupine.org ADDR=168.100.189.2 PROTO=ESMTP",
        )
        .expect("valid");
        u.merge(
            parse_for(
                Verb::Xforward,
                "HELO=spike.porcupine.org IDENT=abc SOURCE=REMOTE",
            )
            .expect("valid"),
        );
        assert_eq!(u.addr, Some("168.100.189.2".parse().expect("ip")));
        assert_eq!(u.helo.as_deref(), Some("spike.porcupine.org"));
        assert!(parse_for(Verb::Xforward, "LOGIN=joe").is_err());
        assert!(parse_for(Verb::Xclient, "IDENT=abc").is_err());
    }

    #[test]
    fn bad_attributes_are_501() {
        for args in [
            "",
            "ADDR",
            "ADDR=300.1.1.1",
            "PORT=70000",
            "PROTO=LMTP",
            "COLOUR=blue",
            "HELO=a+0Db",
            "HELO=a+0",
            "ADDR=1.2.3.4=5",
        ] {
            let r = parse(args).expect_err(args);
            assert_eq!(r.code(), 501, "{args}");
        }
    }
}
