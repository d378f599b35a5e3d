//! Plain `http://` URLs: what the tool connects to and what goes on the request line.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::error::{Error, Result};

/// A parsed `http://host[:port]/path?query` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host as written (brackets stripped for IPv6 literals), used to resolve.
    pub host: String,
    pub port: u16,
    /// The `Host:` header value: host and, when not 80, the port.
    pub authority: String,
    /// Path and query as sent on the request line; always starts with `/`.
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url> {
        let bad = |why: &str| Error::new(format!("bad URL {s:?}: {why}"));
        let rest = if let Some(r) = s.strip_prefix("http://") {
            r
        } else if s.starts_with("https://") {
            return Err(bad(
                "https is not supported (bypass-load speaks plain HTTP/1.1)",
            ));
        } else {
            return Err(bad("expected http://host[:port]/path"));
        };
        let (hostport, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let path = path.split('#').next().unwrap_or("/").to_string();
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("path contains spaces or control characters"));
        }
        if hostport.contains('@') {
            return Err(bad("user info in URLs is not supported"));
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let end = v6.find(']').ok_or_else(|| bad("unclosed '[' in host"))?;
            let host = &v6[..end];
            let after = &v6[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => parse_port(p).ok_or_else(|| bad("invalid port"))?,
                None if after.is_empty() => 80,
                None => return Err(bad("junk after ']'")),
            };
            (host.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    parse_port(p).ok_or_else(|| bad("invalid port"))?,
                ),
                None => (hostport.to_string(), 80),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        if host.bytes().any(|b| b <= b' ' || b == b'/' || b == 0x7f) {
            return Err(bad("invalid host"));
        }
        let authority = if port == 80 {
            hostport
                .rsplit_once(':')
                .map_or(hostport, |(h, _)| h)
                .to_string()
        } else {
            hostport.to_string()
        };
        Ok(Url {
            host,
            port,
            authority,
            path,
        })
    }

    /// `host:port` as one string, for messages and for checking URLs share a target.
    pub fn target(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Resolves the host to the first address the system returns.
    pub fn resolve(&self) -> Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| Error::new(format!("cannot resolve {}: {e}", self.host)))?
            .next()
            .ok_or_else(|| Error::new(format!("cannot resolve {}: no addresses", self.host)))
    }

    /// This URL with its path replaced by `path` (which starts with `/`).
    pub fn with_path(&self, path: &str) -> Url {
        Url {
            path: path.to_string(),
            ..self.clone()
        }
    }
}

fn parse_port(p: &str) -> Option<u16> {
    p.parse().ok().filter(|&n| n != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let u = Url::parse("http://127.0.0.1:8080/null?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8080));
        assert_eq!(u.path, "/null?x=1");
        assert_eq!(u.authority, "127.0.0.1:8080");
        let u = Url::parse("http://localhost").unwrap();
        assert_eq!(
            (u.port, u.path.as_str(), u.authority.as_str()),
            (80, "/", "localhost")
        );
        let u = Url::parse("http://[::1]:9000/a").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        assert_eq!(u.target(), "[::1]:9000");
        let u = Url::parse("http://h?q").unwrap();
        assert_eq!(u.path, "/?q");
    }

    #[test]
    fn rejects_bad_urls() {
        for s in [
            "ftp://x/",
            "https://x/",
            "http://",
            "http://:80/",
            "http://h:0/",
            "http://h:99999/",
            "http://h/a b",
            "localhost:80",
        ] {
            assert!(Url::parse(s).is_err(), "{s} accepted");
        }
    }
}
