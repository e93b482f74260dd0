//! PROXY protocol (v1 text and v2 binary, from HAProxy's specification) before anything else on
//! a connection, when `KSG_PROXY_PROTOCOL=on`: the client's address comes from the load
//! balancer in front, never from a header a client could forge.
//!
//! Exactly the header's bytes are read (its length is known from its first bytes), so what
//! follows (a TLS ClientHello, an HTTP/2 preface) is untouched. A connection that does not
//! start with a valid header in time is closed.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{HeaderResult, PartialResult};
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Longest header: v1 is at most 107 bytes; v2 is 16 bytes plus its addresses and TLVs, kept to
/// this (load balancers add a few TLVs, not kilobytes).
const MAX_HEADER: usize = 1024;
/// Longest v1 header, CRLF included.
const V1_MAX: usize = 107;
/// The first 8 bytes of the v2 signature.
const V2_SIGNATURE_START: &[u8] = b"\r\n\r\n\0\r\nQ";

/// Why a connection's PROXY header was refused.
#[derive(Debug, Error)]
pub enum ProxyError {
    /// Nothing complete within the handshake timeout.
    #[error("no PROXY protocol header within the handshake timeout")]
    Timeout,
    /// The bytes are not a PROXY header.
    #[error("invalid PROXY protocol header")]
    Invalid,
    /// The peer is not in `KSG_PROXY_PROTOCOL_FROM`.
    #[error("a connection from outside KSG_PROXY_PROTOCOL_FROM")]
    Untrusted,
    /// The connection closed or failed first.
    #[error("connection closed before its PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// A network the PROXY header is trusted from (`KSG_PROXY_PROTOCOL_FROM`): an address and a
/// prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `a.b.c.d/n`, `v6::/n` or a lone address (a network of one).
    pub fn parse(s: &str) -> Result<Network, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or address/prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix must be 0 to {max}"))?,
        };
        Ok(Network { addr, prefix })
    }

    /// Whether `ip` is in the network (an IPv4-mapped IPv6 peer counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let bits = |a: IpAddr| match a {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, true),
            IpAddr::V6(v6) => (u128::from(v6), false),
        };
        let (net, net_v4) = bits(self.addr);
        let (got, got_v4) = bits(ip);
        // IPv4 sits in the top 32 bits, so its prefix counts from the top as IPv6's does.
        let prefix = u32::from(self.prefix);
        let mask = if prefix == 0 {
            0
        } else {
            u128::MAX << (128 - prefix)
        };
        net_v4 == got_v4 && net & mask == got & mask
    }
}

/// Reads a PROXY header from `tcp` and returns the client address it names: `None` for a
/// `LOCAL` command or an `UNKNOWN`/unspecified family (health checks from the proxy itself; the
/// peer address is used).
pub async fn read_header(
    tcp: &mut TcpStream,
    deadline: Duration,
) -> Result<Option<SocketAddr>, ProxyError> {
    tokio::time::timeout(deadline, read(tcp))
        .await
        .map_err(|_| ProxyError::Timeout)?
}

async fn read(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyError> {
    // Both versions are longer than 8 bytes, so reading 8 never takes what follows the header.
    let mut header = vec![0u8; 8];
    tcp.read_exact(&mut header).await?;
    if header.starts_with(V2_SIGNATURE_START) {
        header.resize(16, 0);
        tcp.read_exact(&mut header[8..]).await?;
        let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
        if 16 + len > MAX_HEADER {
            return Err(ProxyError::Invalid);
        }
        header.resize(16 + len, 0);
        tcp.read_exact(&mut header[16..]).await?;
    } else if header.starts_with(b"PROXY ") {
        // v1 ends with CRLF within 107 bytes; read byte by byte so nothing after it is taken.
        while !header.ends_with(b"\r\n") {
            if header.len() >= V1_MAX {
                return Err(ProxyError::Invalid);
            }
            header.push(tcp.read_u8().await?);
        }
    } else {
        return Err(ProxyError::Invalid);
    }
    match parse(&header) {
        Parsed::Complete(len, addr) if len == header.len() => Ok(addr),
        _ => Err(ProxyError::Invalid),
    }
}

/// What the first bytes of a connection hold.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A header of this many bytes, naming this client (or none).
    Complete(usize, Option<SocketAddr>),
    /// Not a PROXY header.
    Invalid,
    /// More bytes needed.
    Incomplete,
}

fn parse(bytes: &[u8]) -> Parsed {
    let result = HeaderResult::parse(bytes);
    if result.is_incomplete() {
        return Parsed::Incomplete;
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let addr = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            Parsed::Complete(h.header.len(), addr)
        }
        HeaderResult::V2(Ok(h)) => {
            let addr = match (h.command, h.addresses) {
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                _ => None,
            };
            Parsed::Complete(h.len(), addr)
        }
        _ => Parsed::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses() {
        let net = |s: &str| Network::parse(s).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(net("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("10.0.0.0/8").contains(ip("::ffff:10.1.1.1")));
        assert!(net("192.0.2.10").contains(ip("192.0.2.10")));
        assert!(!net("192.0.2.10").contains(ip("192.0.2.11")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.1")));
        assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(net("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!net("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
        for bad in ["", "10.0.0.0/33", "2001:db8::/129", "x/8", "10.0.0.0/-1"] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn v1_headers_name_the_client() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 8443\r\n\x16\x03\x01";
        assert_eq!(
            parse(h),
            Parsed::Complete(h.len() - 3, Some("203.0.113.7:51000".parse().unwrap()))
        );
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 51000 8443\r\n";
        assert_eq!(
            parse(h),
            Parsed::Complete(h.len(), Some("[2001:db8::1]:51000".parse().unwrap()))
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Parsed::Complete(15, None));
        assert_eq!(parse(b"PROXY TCP4 203.0.113.7"), Parsed::Incomplete);
        assert_eq!(parse(b"PRO"), Parsed::Incomplete);
    }

    #[test]
    fn v2_headers_name_the_client() {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 12]); // v2 PROXY, TCP over IPv4, 12 bytes
        h.extend_from_slice(&[198, 51, 100, 9, 10, 0, 0, 1]);
        h.extend_from_slice(&[0xc7, 0x38, 0x20, 0xfb]); // ports 51000, 8443
        let len = h.len();
        h.extend_from_slice(b"PRI * HTTP/2.0");
        assert_eq!(
            parse(&h),
            Parsed::Complete(len, Some("198.51.100.9:51000".parse().unwrap()))
        );
        assert_eq!(parse(&h[..20]), Parsed::Incomplete);
        // LOCAL: the proxy's own health check.
        let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local), Parsed::Complete(16, None));
    }

    /// `read_header` on a real socket that received `bytes`: its result, and what is left.
    async fn over_tcp(bytes: &'static [u8]) -> (Result<Option<SocketAddr>, String>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(bytes).await.unwrap();
            c.shutdown().await.unwrap();
            // Held open until the server has read.
            let mut sink = Vec::new();
            let _ = c.read_to_end(&mut sink).await;
        });
        let (mut server, _) = listener.accept().await.unwrap();
        let result = read_header(&mut server, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string());
        let mut rest = Vec::new();
        let _ = server.read_to_end(&mut rest).await;
        drop(server);
        let _ = client.await;
        (result, rest)
    }

    #[tokio::test]
    async fn the_header_is_consumed_and_what_follows_is_untouched() {
        let (r, rest) =
            over_tcp(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 8443\r\n\x16\x03\x01").await;
        assert_eq!(r.unwrap(), Some("203.0.113.7:51000".parse().unwrap()));
        assert_eq!(rest, b"\x16\x03\x01");
        let (r, rest) = over_tcp(b"PROXY UNKNOWN\r\nPRI").await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, b"PRI");
        let v2: &[u8] =
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\0\x0c\xc6\x33\x64\x09\x0a\0\0\x01\xc7\x38\x20\xfbPRI";
        let (r, rest) = over_tcp(v2).await;
        assert_eq!(r.unwrap(), Some("198.51.100.9:51000".parse().unwrap()));
        assert_eq!(rest, b"PRI");
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for bytes in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
            b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"PROXY TCP4 nonsense\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 200000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
        ] {
            let (r, _) = over_tcp(bytes).await;
            assert!(r.is_err(), "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let r = read_header(&mut server, Duration::from_secs(10)).await;
        assert!(matches!(r, Err(ProxyError::Timeout)));
    }
}
