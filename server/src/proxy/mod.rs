//! The reverse proxy to the app server, without I/O: what goes upstream for a request, how the
//! upstream's response is checked and reframed for the client, and X-Accel-Redirect.
//!
//! [`exchange::Exchange`] is one request/response round trip; [`crate::conn::Conn`] drives it
//! for the engines, which only open upstream sockets and move bytes (see `engine::upstream`).

pub mod chunked;
pub mod exchange;
pub mod head;

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// Where the app server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl UpstreamAddr {
    /// `HOST:PORT` (names resolved once, now) or `unix:/path/to.sock`.
    pub fn parse(text: &str) -> Result<UpstreamAddr, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("--upstream {text:?} names no socket path"));
            }
            return Ok(UpstreamAddr::Unix(PathBuf::from(path)));
        }
        if let Ok(addr) = text.parse() {
            return Ok(UpstreamAddr::Tcp(addr));
        }
        match text.to_socket_addrs() {
            Ok(mut addrs) => addrs
                .next()
                .map(UpstreamAddr::Tcp)
                .ok_or_else(|| format!("--upstream {text:?} resolves to no address")),
            Err(_) => Err(format!(
                "--upstream {text:?} is not HOST:PORT or unix:/path/to.sock"
            )),
        }
    }
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamAddr::Tcp(addr) => write!(f, "{addr}"),
            UpstreamAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// An address or network whose forwarding headers are believed (`--trusted-proxy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// An IP address, or a CIDR network like `10.0.0.0/8`.
    pub fn parse(text: &str) -> Option<Network> {
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, bits)) => (ip.parse::<IpAddr>().ok()?, Some(bits.parse::<u8>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Network { addr: ip, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// How requests are passed to the app.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub upstream: UpstreamAddr,
    /// Largest request body passed on; larger ones get 413 before anything reaches the app.
    pub max_body_size: u64,
    /// Seconds the app may leave a request without any progress before 504 (or, once the
    /// response has started, before the client connection is closed).
    pub timeout_secs: u64,
    /// Peers whose X-Forwarded-* fields are kept (and appended to).
    pub trusted: Vec<Network>,
    /// Idle keep-alive connections to the app each worker keeps for reuse.
    pub max_idle: usize,
}

impl ProxySettings {
    pub fn trusts(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| self.trusted.iter().any(|n| n.contains(ip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_addresses() {
        assert_eq!(
            UpstreamAddr::parse("127.0.0.1:8000").unwrap(),
            UpstreamAddr::Tcp("127.0.0.1:8000".parse().unwrap())
        );
        assert_eq!(
            UpstreamAddr::parse("unix:/run/app.sock").unwrap(),
            UpstreamAddr::Unix("/run/app.sock".into())
        );
        assert!(UpstreamAddr::parse("unix:").is_err());
        assert!(UpstreamAddr::parse("nowhere").is_err());
        assert_eq!(
            UpstreamAddr::parse("unix:/a b").unwrap().to_string(),
            "unix:/a b"
        );
    }

    #[test]
    fn networks() {
        let lo = Network::parse("127.0.0.1").unwrap();
        assert!(lo.contains("127.0.0.1".parse().unwrap()));
        assert!(!lo.contains("127.0.0.2".parse().unwrap()));
        assert!(lo.contains("::ffff:127.0.0.1".parse().unwrap()));
        let ten = Network::parse("10.0.0.0/8").unwrap();
        assert!(ten.contains("10.200.3.4".parse().unwrap()));
        assert!(!ten.contains("11.0.0.1".parse().unwrap()));
        let any = Network::parse("0.0.0.0/0").unwrap();
        assert!(any.contains("8.8.8.8".parse().unwrap()));
        let v6 = Network::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "1.2.3.4/x", "::/129"] {
            assert!(Network::parse(bad).is_none(), "{bad}");
        }
    }
}
