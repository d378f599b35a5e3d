//! Where the request mix comes from: URLs on the command line, a `--urls`
//! file, a Django static manifest (`--zipf`) or an nginx access log
//! (`--replay`). Each yields paths on one target and how to choose them.

pub mod accesslog;
pub mod manifest;
pub mod urlfile;

use crate::error::{Error, Result};
use crate::mix::Order;
use crate::url::Url;

/// The paths to request on one target, and in what proportions or order.
#[derive(Debug)]
pub struct Paths {
    /// The URL whose host and port every request goes to.
    pub base: Url,
    pub paths: Vec<String>,
    pub order: Order,
}

/// Checks all URLs name the same host and port: one run measures one server.
pub fn same_target(urls: &[Url]) -> Result<()> {
    if let Some(first) = urls.first() {
        if let Some(other) = urls.iter().find(|u| u.target() != first.target()) {
            return Err(Error::new(format!(
                "all URLs must name the same host:port (got {} and {})",
                first.target(),
                other.target()
            )));
        }
    }
    Ok(())
}

/// Paths from URLs given on the command line, equally weighted.
pub fn from_urls(urls: &[Url]) -> Result<Paths> {
    let base = urls
        .first()
        .ok_or_else(|| Error::new("no URL given (try --help)"))?
        .clone();
    same_target(urls)?;
    Ok(Paths {
        base,
        paths: urls.iter().map(|u| u.path.clone()).collect(),
        order: Order::Weighted(vec![1.0; urls.len()]),
    })
}

/// Joins a base path (`/static/`) and a relative name (`css/app.css`).
pub fn join(base: &str, name: &str) -> String {
    let base = base.split('?').next().unwrap_or("/");
    let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    format!("{dir}{}", name.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_and_checks_targets() {
        assert_eq!(join("/static/", "css/a.css"), "/static/css/a.css");
        assert_eq!(join("/static", "a.css"), "/a.css");
        assert_eq!(join("/", "/a"), "/a");
        let a = Url::parse("http://h:1/a").unwrap();
        let b = Url::parse("http://h:2/b").unwrap();
        assert!(same_target(&[a.clone(), a.clone()]).is_ok());
        assert!(from_urls(&[a, b]).is_err());
    }
}
