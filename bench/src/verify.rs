//! What a correct answer to each workload is, and the check every contender passes before it is
//! measured: the status, and a body exactly as long as the representation it names (the file,
//! or its `.br`/`.gz`/`.zst` sibling when the answer carries that Content-Encoding).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::client::{self, Client};
use crate::contender::Env;
use crate::suite::{BROWSER_ACCEPT_ENCODING, Workload};

/// The tree's facts the workloads need: hashed names from the manifest, file locations.
#[derive(Clone, Debug)]
pub struct Site {
    pub static_root: PathBuf,
    pub media_root: PathBuf,
    pub manifest_path: PathBuf,
    /// Unhashed name -> hashed name, from `staticfiles.json`.
    pub hashed: HashMap<String, String>,
    pub hello: PathBuf,
}

pub const MEDIA_FILE: &str = "uploads/big-20MB.bin";

impl Site {
    pub fn load(env: &Env) -> Result<Site, String> {
        let manifest_path = env.manifest();
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
            format!(
                "{}: {e} (scripts/collectstatic builds it)",
                manifest_path.display()
            )
        })?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", manifest_path.display()))?;
        let hashed = doc
            .get("paths")
            .and_then(|p| p.as_object())
            .ok_or_else(|| format!("{}: no \"paths\"", manifest_path.display()))?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect();
        Ok(Site {
            static_root: env.static_root(),
            media_root: env.media_root(),
            manifest_path,
            hashed,
            hello: env.hello_page(),
        })
    }

    fn hashed_name(&self, name: &str) -> Result<&str, String> {
        self.hashed
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("{name} is not in the manifest"))
    }

    /// The request path of workload `w` (for the Zipf mix: the STATIC_URL base).
    pub fn path(&self, w: Workload) -> Result<String, String> {
        Ok(match w {
            Workload::Media20Mb => format!("/media/{MEDIA_FILE}"),
            Workload::DjangoView => "/hello/".into(),
            Workload::ZipfMix => "/static/".into(),
            _ => format!(
                "/static/{}",
                self.hashed_name(w.static_name().expect("a static workload"))?
            ),
        })
    }

    /// The file behind workload `w`'s identity representation.
    pub fn file(&self, w: Workload) -> Result<PathBuf, String> {
        Ok(match w {
            Workload::Media20Mb => self.media_root.join(MEDIA_FILE),
            Workload::DjangoView => self.hello.clone(),
            Workload::ZipfMix => self.file(Workload::MediumCssBr)?,
            _ => self
                .static_root
                .join(self.hashed_name(w.static_name().expect("a static workload"))?),
        })
    }

    /// The body length a correct `w` answer with `encoding` has.
    pub fn expected_len(&self, w: Workload, encoding: Option<&str>) -> Result<u64, String> {
        if w.expected_status() == 304 {
            return Ok(0);
        }
        let file = self.file(w)?;
        let file = match encoding.map(str::trim) {
            None | Some("identity") => file,
            Some(e) => {
                let suffix = match e {
                    "br" => "br",
                    "gzip" => "gz",
                    "zstd" => "zst",
                    other => return Err(format!("unexpected Content-Encoding {other}")),
                };
                let mut s = file.into_os_string();
                s.push(".");
                s.push(suffix);
                PathBuf::from(s)
            }
        };
        std::fs::metadata(&file)
            .map(|m| m.len())
            .map_err(|e| format!("{}: {e}", file.display()))
    }

    /// The representation the ceiling sends for `w`: (content type, encoding, body).
    pub fn ceiling_body(
        &self,
        w: Workload,
    ) -> Result<(&'static str, Option<&'static str>, Vec<u8>), String> {
        let (ctype, encoding) = match w {
            Workload::SmallCss | Workload::PipelinedCss | Workload::LatencyOpen => {
                ("text/css; charset=utf-8", None)
            }
            Workload::MediumCssBr | Workload::Revalidate304 => {
                ("text/css; charset=utf-8", Some("br"))
            }
            Workload::Jpeg => ("image/jpeg", None),
            Workload::Media20Mb => ("application/octet-stream", None),
            Workload::DjangoView => ("text/html; charset=utf-8", None),
            Workload::ZipfMix => return Err("the ceiling has no mix".into()),
        };
        let mut file = self.file(w)?.into_os_string();
        if encoding.is_some() {
            file.push(".br");
        }
        let file = PathBuf::from(file);
        let body = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        Ok((ctype, encoding, body))
    }
}

/// A contender's answer passed: what bypass-load must send to get that answer again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// The Content-Encoding it answered with (br, gzip, ... or none).
    pub encoding: Option<String>,
    /// Header fields for the measured requests (validators of a 304 workload among them).
    pub headers: Vec<(String, String)>,
}

/// Asks `addr` what workload `w` asks and checks the answer. `always_same`: the server answers
/// everything alike (the ceiling), so a 304 is asked for with made-up validators.
pub fn check(
    addr: SocketAddr,
    site: &Site,
    w: Workload,
    always_same: bool,
) -> Result<Checked, String> {
    let path = match w {
        // The mix's requests are checked by bypass-load's status counts; here one of its files.
        Workload::ZipfMix => site.path(Workload::MediumCssBr)?,
        _ => site.path(w)?,
    };
    let host = addr.to_string();
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(ae) = w.accept_encoding().or(match w {
        Workload::ZipfMix => Some(BROWSER_ACCEPT_ENCODING),
        _ => None,
    }) {
        headers.push(("Accept-Encoding".into(), ae.into()));
    }
    let mut c = Client::new(addr);
    let mut ask = |headers: &[(String, String)]| {
        c.send(&client::request("GET", &path, &host, headers), false)
            .map_err(|e| format!("GET {path}: {e}"))
    };
    if w.expected_status() == 304 {
        let (etag, modified) = if always_same {
            (Some("\"null\"".to_string()), None)
        } else {
            let r = ask(&headers)?;
            if r.status != 200 {
                return Err(format!("GET {path}: {} where 200 was expected", r.status));
            }
            (
                r.header("etag").map(str::to_string),
                r.header("last-modified").map(str::to_string),
            )
        };
        if etag.is_none() && modified.is_none() {
            return Err(format!(
                "GET {path}: no ETag nor Last-Modified to revalidate"
            ));
        }
        if let Some(e) = etag {
            headers.push(("If-None-Match".into(), e));
        }
        if let Some(m) = modified {
            headers.push(("If-Modified-Since".into(), m));
        }
    }
    let r = ask(&headers)?;
    let want_status = w.expected_status();
    let encoding = r
        .header("content-encoding")
        .map(|e| e.trim().to_ascii_lowercase());
    if r.status != want_status {
        return Err(format!(
            "GET {path}: status {} where {want_status} was expected",
            r.status
        ));
    }
    let want_len = site.expected_len(w, encoding.as_deref())?;
    if r.body_len != want_len {
        return Err(format!(
            "GET {path}: {} body bytes where {want_len} were expected (Content-Encoding: {})",
            r.body_len,
            encoding.as_deref().unwrap_or("none")
        ));
    }
    if w == Workload::ZipfMix {
        // The mix sends its own Accept-Encoding values.
        headers.clear();
    }
    Ok(Checked { encoding, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(dir: &std::path::Path) -> Site {
        let s = dir.join("static");
        std::fs::create_dir_all(s.join("demo")).unwrap();
        std::fs::write(s.join("demo/medium.abc.css"), vec![b'x'; 1000]).unwrap();
        std::fs::write(s.join("demo/medium.abc.css.br"), vec![b'x'; 100]).unwrap();
        std::fs::write(s.join("demo/medium.abc.css.gz"), vec![b'x'; 150]).unwrap();
        Site {
            static_root: s.clone(),
            media_root: dir.join("media"),
            manifest_path: s.join("staticfiles.json"),
            hashed: [(
                "demo/medium.css".to_string(),
                "demo/medium.abc.css".to_string(),
            )]
            .into(),
            hello: dir.join("hello.html"),
        }
    }

    #[test]
    fn expected_length_follows_the_encoding_named() {
        let dir = tempfile::tempdir().unwrap();
        let s = site(dir.path());
        let w = Workload::MediumCssBr;
        assert_eq!(s.path(w).unwrap(), "/static/demo/medium.abc.css");
        assert_eq!(s.expected_len(w, None).unwrap(), 1000);
        assert_eq!(s.expected_len(w, Some("br")).unwrap(), 100);
        assert_eq!(s.expected_len(w, Some("gzip")).unwrap(), 150);
        assert!(s.expected_len(w, Some("zstd")).is_err(), "no .zst sibling");
        assert!(s.expected_len(w, Some("compress")).is_err());
        assert_eq!(
            s.expected_len(Workload::Revalidate304, Some("br")).unwrap(),
            0
        );
        assert!(s.path(Workload::SmallCss).is_err(), "not in the manifest");
        let (ctype, enc, body) = s.ceiling_body(w).unwrap();
        assert_eq!(
            (ctype, enc, body.len()),
            ("text/css; charset=utf-8", Some("br"), 100)
        );
    }
}
