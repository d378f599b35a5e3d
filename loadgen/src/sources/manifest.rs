//! `--zipf STATIC_ROOT/staticfiles.json`: a realistic hot-set mix over the
//! files Django's ManifestStaticFilesStorage wrote. The hashed names (what
//! pages actually reference) are ranked in a seeded random order and file k
//! gets weight 1/k^s, so a few files take most requests, as on real sites.

use std::path::Path;

use serde_json::Value;

use super::{Paths, join};
use crate::error::{Error, Result, io_context};
use crate::mix::Order;
use crate::url::Url;

pub fn load(file: &Path, base: &Url, s: f64, seed: u64) -> Result<Paths> {
    let what = format!("--zipf {}", file.display());
    let text = std::fs::read_to_string(file).map_err(|e| io_context(&what, e))?;
    let names = parse(&text).map_err(|e| e.context(&what))?;
    Ok(zipf(base, names, s, seed))
}

/// The hashed file names of a manifest, sorted (so ranking depends only on the seed).
pub fn parse(text: &str) -> Result<Vec<String>> {
    let doc: Value =
        serde_json::from_str(text).map_err(|e| Error::new(format!("not JSON: {e}")))?;
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::new("no \"paths\" object (is this Django's staticfiles.json?)"))?;
    let mut names = Vec::with_capacity(paths.len());
    for (orig, hashed) in paths {
        let hashed = hashed
            .as_str()
            .ok_or_else(|| Error::new(format!("paths[{orig:?}] is not a string")))?;
        if hashed.is_empty() || hashed.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(Error::new(format!(
                "paths[{orig:?}] = {hashed:?} is not a usable file name"
            )));
        }
        names.push(hashed.to_string());
    }
    if names.is_empty() {
        return Err(Error::new("\"paths\" is empty"));
    }
    names.sort();
    names.dedup();
    Ok(names)
}

fn zipf(base: &Url, mut names: Vec<String>, s: f64, seed: u64) -> Paths {
    // Fisher-Yates with a fixed-seed generator: reproducible hot set that
    // does not follow alphabetical order.
    let mut state = seed ^ 0x5851_f42d_4c95_7f2d;
    for i in (1..names.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let j = ((state >> 33) % (i as u64 + 1)) as usize;
        names.swap(i, j);
    }
    let weights = (1..=names.len())
        .map(|k| 1.0 / (k as f64).powf(s))
        .collect();
    Paths {
        base: base.clone(),
        paths: names.iter().map(|n| join(&base.path, n)).collect(),
        order: Order::Weighted(weights),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"{"paths": {"css/app.css": "css/app.4f3a.css", "js/app.js": "js/app.9b1c.js", "img/logo.png": "img/logo.77aa.png"}, "version": "1.1", "hash": "x"}"#;

    #[test]
    fn ranks_hashed_names_with_zipf_weights() {
        let base = Url::parse("http://h:8000/static/").unwrap();
        let names = parse(MANIFEST).unwrap();
        assert_eq!(names.len(), 3);
        let p = zipf(&base, names, 1.0, 1);
        assert!(
            p.paths
                .iter()
                .all(|p| p.starts_with("/static/") && p.contains('.'))
        );
        assert!(p.paths.contains(&"/static/css/app.4f3a.css".to_string()));
        match p.order {
            Order::Weighted(w) => assert_eq!(w, [1.0, 0.5, 1.0 / 3.0]),
            Order::Sequence(_) => panic!(),
        }
        // The seed decides the ranking, reproducibly.
        let again = zipf(&base, parse(MANIFEST).unwrap(), 1.0, 1);
        assert_eq!(again.paths, p.paths);
    }

    #[test]
    fn rejects_malformed_manifests() {
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"paths": []}"#,
            r#"{"paths": {}}"#,
            r#"{"paths": {"a": 1}}"#,
            r#"{"paths": {"a": "x y"}}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }
}
