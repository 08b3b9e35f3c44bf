//! The PROXY protocol header (HAProxy, versions 1 and 2): the real client address when
//! mailwarden sits behind a TCP load balancer.
//!
//! A load balancer (HAProxy, nginx `stream`, a cloud LB) hides the client: every connection
//! comes from the balancer. With `[server] proxy_protocol = true` the balancer prefixes each
//! connection with one header naming the client, and mailwarden uses that address for
//! everything that needs the client — SPF, DNSBL, trusted networks, XCLIENT upstream, the
//! Received header and the logs.
//!
//! Only peers in `[server] trusted_proxies` are asked for the header (anyone else could claim
//! any address); other peers are ordinary SMTP clients. A trusted peer that sends no valid
//! header within [`HEADER_TIMEOUT`] is disconnected without a reply, as the specification
//! requires of a receiver (haproxy's `doc/proxy-protocol.txt` §2: "the receiver must not
//! start processing the connection" and must drop an invalid one).
//!
//! The header is read byte-exactly (never past its end): what follows belongs to SMTP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a trusted proxy may take to send the header after connecting.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The v2 signature (§2.2): `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A v1 header is at most 107 bytes, CRLF included (§2.1).
const V1_MAX: usize = 107;

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection was relayed for this client, to this destination.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The proxy's own connection (v2 LOCAL, e.g. a health check) or an unknown protocol
    /// (v1 `UNKNOWN`, v2 `AF_UNSPEC`/unix): keep the connection's own addresses.
    Local,
}

/// Why a header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("no PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before the PROXY protocol header was complete")]
    Closed,
    #[error("read error: {0}")]
    Io(String),
    #[error("not a PROXY protocol header (starts with {0:?})")]
    NotProxy(String),
    #[error("malformed PROXY v1 header: {0}")]
    BadV1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    BadV2(&'static str),
}

/// Reads one header (v1 or v2) from `stream`, within [`HEADER_TIMEOUT`].
pub async fn read_header<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Header, HeaderError> {
    match tokio::time::timeout(HEADER_TIMEOUT, read_header_now(stream)).await {
        Ok(result) => result,
        Err(_) => Err(HeaderError::Timeout(HEADER_TIMEOUT)),
    }
}

async fn read_header_now<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Header, HeaderError> {
    // Both versions can be told apart by their first 5 bytes ("PROXY" or "\r\n\r\n\0").
    let mut start = [0u8; 5];
    read_exact(stream, &mut start).await?;
    if &start == b"PROXY" {
        let mut line = start.to_vec();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err(HeaderError::BadV1("longer than 107 bytes"));
            }
            read_exact(stream, &mut byte).await?;
            line.push(byte[0]);
        }
        return parse_v1(&line);
    }
    if start != V2_SIGNATURE[..5] {
        return Err(HeaderError::NotProxy(
            String::from_utf8_lossy(&start).into_owned(),
        ));
    }
    let mut fixed = [0u8; 16];
    fixed[..5].copy_from_slice(&start);
    read_exact(stream, &mut fixed[5..]).await?;
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let mut rest = vec![0u8; len];
    read_exact(stream, &mut rest).await?;
    parse_v2(&fixed, &rest)
}

async fn read_exact<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut [u8],
) -> Result<(), HeaderError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(HeaderError::Closed),
        Err(e) => Err(HeaderError::Io(e.to_string())),
    }
}

/// Parses a whole v1 line, CRLF included (§2.1):
/// `PROXY TCP4 192.0.2.1 198.51.100.1 56324 25\r\n`, or `PROXY UNKNOWN[ …]\r\n`.
pub fn parse_v1(line: &[u8]) -> Result<Header, HeaderError> {
    let text = line
        .strip_suffix(b"\r\n")
        .ok_or(HeaderError::BadV1("no CRLF at the end"))?;
    let text = std::str::from_utf8(text).map_err(|_| HeaderError::BadV1("not ASCII"))?;
    let mut fields = text.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(HeaderError::BadV1("does not start with \"PROXY \""));
    }
    let family = fields.next().ok_or(HeaderError::BadV1("no protocol"))?;
    let v6 = match family {
        // §2.1: the receiver ignores whatever follows UNKNOWN.
        "UNKNOWN" => return Ok(Header::Local),
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(HeaderError::BadV1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let mut next = || fields.next().ok_or(HeaderError::BadV1("too few fields"));
    let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err(HeaderError::BadV1("too many fields"));
    }
    let ip = |s: &str| -> Result<IpAddr, HeaderError> {
        let ip = if v6 {
            s.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            s.parse::<Ipv4Addr>().map(IpAddr::V4)
        };
        ip.map_err(|_| HeaderError::BadV1("bad address for the protocol"))
    };
    let port = |s: &str| -> Result<u16, HeaderError> {
        // §2.1: ports are decimal without leading zeros.
        if s.len() > 1 && s.starts_with('0') {
            return Err(HeaderError::BadV1("port with a leading zero"));
        }
        s.parse::<u16>()
            .map_err(|_| HeaderError::BadV1("bad port number"))
    };
    Ok(Header::Proxied {
        source: SocketAddr::new(ip(src)?, port(sport)?),
        destination: SocketAddr::new(ip(dst)?, port(dport)?),
    })
}

/// Parses a v2 header: the 16 fixed bytes and the `len` bytes after them (§2.2).
/// TLVs after the addresses are ignored.
pub fn parse_v2(fixed: &[u8; 16], rest: &[u8]) -> Result<Header, HeaderError> {
    if fixed[..12] != V2_SIGNATURE {
        return Err(HeaderError::BadV2("bad signature"));
    }
    let version = fixed[12] >> 4;
    let command = fixed[12] & 0x0f;
    if version != 2 {
        return Err(HeaderError::BadV2("version is not 2"));
    }
    match command {
        0 => return Ok(Header::Local),
        1 => {}
        _ => return Err(HeaderError::BadV2("command is neither LOCAL nor PROXY")),
    }
    let family = fixed[13] >> 4;
    let transport = fixed[13] & 0x0f;
    // Address families: 1 = INET, 2 = INET6; 0 (UNSPEC) and 3 (UNIX) carry no IP address.
    if !(family == 1 || family == 2) || transport == 0 {
        return Ok(Header::Local);
    }
    let (source, destination) = if family == 1 {
        let a: &[u8; 12] =
            rest.get(..12)
                .and_then(|s| s.try_into().ok())
                .ok_or(HeaderError::BadV2(
                    "address block shorter than 12 bytes for IPv4",
                ))?;
        let src = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
        let dst = Ipv4Addr::new(a[4], a[5], a[6], a[7]);
        (
            SocketAddr::new(src.into(), u16::from_be_bytes([a[8], a[9]])),
            SocketAddr::new(dst.into(), u16::from_be_bytes([a[10], a[11]])),
        )
    } else {
        let a: &[u8; 36] =
            rest.get(..36)
                .and_then(|s| s.try_into().ok())
                .ok_or(HeaderError::BadV2(
                    "address block shorter than 36 bytes for IPv6",
                ))?;
        let octets = |s: &[u8]| -> [u8; 16] {
            let mut o = [0u8; 16];
            o.copy_from_slice(s);
            o
        };
        let src = Ipv6Addr::from(octets(&a[..16]));
        let dst = Ipv6Addr::from(octets(&a[16..32]));
        (
            SocketAddr::new(src.into(), u16::from_be_bytes([a[32], a[33]])),
            SocketAddr::new(dst.into(), u16::from_be_bytes([a[34], a[35]])),
        )
    };
    Ok(Header::Proxied {
        source,
        destination,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
        h.extend_from_slice(addrs);
        h
    }

    async fn read(bytes: &[u8]) -> (Result<Header, HeaderError>, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(bytes.to_vec());
        let header = read_header(&mut cursor).await;
        let mut after = Vec::new();
        let _ = cursor.read_to_end(&mut after).await;
        (header, after)
    }

    #[tokio::test]
    async fn v1_tcp4_and_the_bytes_after_it_are_left_for_smtp() {
        let (h, after) = read(b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\nEHLO x\r\n").await;
        assert_eq!(
            h,
            Ok(Header::Proxied {
                source: "192.0.2.7:56324".parse().expect("addr"),
                destination: "198.51.100.1:25".parse().expect("addr"),
            })
        );
        assert_eq!(after, b"EHLO x\r\n");
    }

    #[tokio::test]
    async fn v1_tcp6_and_unknown() {
        let (h, _) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 25\r\n").await;
        assert_eq!(
            h,
            Ok(Header::Proxied {
                source: "[2001:db8::7]:4000".parse().expect("addr"),
                destination: "[2001:db8::1]:25".parse().expect("addr"),
            })
        );
        let (h, _) = read(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").await;
        assert_eq!(h, Ok(Header::Local));
    }

    #[test]
    fn v1_malformed_lines_are_refused() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\n"[..],
            b"PROXY TCP4 2001:db8::7 198.51.100.1 1 25\r\n",
            b"PROXY TCP6 192.0.2.7 198.51.100.1 1 25\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2 3\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 070000 25\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 01 25\r\n",
            b"PROXY  TCP4 192.0.2.7 198.51.100.1 1 25\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 1 25\r\n",
        ] {
            assert!(parse_v1(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[tokio::test]
    async fn v1_without_crlf_within_107_bytes_is_refused() {
        let mut line = b"PROXY TCP4 ".to_vec();
        line.extend(std::iter::repeat_n(b'1', 200));
        let (h, _) = read(&line).await;
        assert_eq!(h, Err(HeaderError::BadV1("longer than 107 bytes")));
    }

    #[tokio::test]
    async fn v2_proxy_ipv4_with_tlvs_and_smtp_after_it() {
        let mut addrs = vec![192, 0, 2, 7, 198, 51, 100, 1, 0xdc, 0x04, 0, 25];
        addrs.extend_from_slice(&[0x04, 0, 1, 0xff]); // a TLV, ignored
        let mut bytes = v2(1, 0x11, &addrs);
        bytes.extend_from_slice(b"EHLO x\r\n");
        let (h, after) = read(&bytes).await;
        assert_eq!(
            h,
            Ok(Header::Proxied {
                source: "192.0.2.7:56324".parse().expect("addr"),
                destination: "198.51.100.1:25".parse().expect("addr"),
            })
        );
        assert_eq!(after, b"EHLO x\r\n");
    }

    #[tokio::test]
    async fn v2_proxy_ipv6_local_and_unspec() {
        let src: Ipv6Addr = "2001:db8::7".parse().expect("ip");
        let dst: Ipv6Addr = "2001:db8::1".parse().expect("ip");
        let mut addrs = src.octets().to_vec();
        addrs.extend_from_slice(&dst.octets());
        addrs.extend_from_slice(&[0x0f, 0xa0, 0, 25]);
        let (h, _) = read(&v2(1, 0x21, &addrs)).await;
        assert_eq!(
            h,
            Ok(Header::Proxied {
                source: "[2001:db8::7]:4000".parse().expect("addr"),
                destination: "[2001:db8::1]:25".parse().expect("addr"),
            })
        );
        assert_eq!(read(&v2(0, 0x00, &[])).await.0, Ok(Header::Local));
        assert_eq!(read(&v2(1, 0x00, &[])).await.0, Ok(Header::Local));
    }

    #[tokio::test]
    async fn v2_short_address_block_bad_version_and_truncation_are_refused() {
        assert!(read(&v2(1, 0x11, &[1, 2, 3])).await.0.is_err());
        let mut bad_version = v2(1, 0x11, &[0; 12]);
        bad_version[12] = 0x11;
        assert!(read(&bad_version).await.0.is_err());
        let whole = v2(1, 0x11, &[0; 12]);
        assert_eq!(
            read(&whole[..20]).await.0,
            Err(HeaderError::Closed),
            "a header cut short"
        );
    }

    #[tokio::test]
    async fn plain_smtp_is_not_a_header() {
        assert!(matches!(
            read(b"EHLO client.example\r\n").await.0,
            Err(HeaderError::NotProxy(_))
        ));
    }
}
