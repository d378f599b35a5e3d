//! `--urls FILE`: one URL (or a /path on the command-line URL's host) per line,
//! optionally followed by a weight; `#` starts a comment.

use std::path::Path;

use super::{Paths, same_target};
use crate::error::{Error, Result, io_context};
use crate::mix::Order;
use crate::url::Url;

pub fn load(file: &Path, base: Option<&Url>) -> Result<Paths> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| io_context(format!("--urls {}", file.display()), e))?;
    parse(&text, base).map_err(|e| e.context(format!("--urls {}", file.display())))
}

/// Relative `/path` lines go to the host of `base` (the command-line URL),
/// or else of the file's first absolute URL.
pub fn parse(text: &str, base: Option<&Url>) -> Result<Paths> {
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = move |msg: String| Error::new(format!("line {}: {msg}", n + 1));
        let mut parts = line.split_whitespace();
        let target = parts.next().unwrap_or_default();
        let weight = match parts.next() {
            None => 1.0,
            Some(w) => match w.parse::<f64>() {
                Ok(w) if w > 0.0 && w.is_finite() => w,
                _ => return Err(at(format!("weight {w:?} must be a positive number"))),
            },
        };
        if parts.next().is_some() {
            return Err(at("expected 'URL [WEIGHT]'".to_string()));
        }
        let url = if target.starts_with('/') {
            None
        } else {
            Some(Url::parse(target).map_err(|e| at(e.0))?)
        };
        lines.push((at, target, url, weight));
    }
    let host = base
        .cloned()
        .or_else(|| lines.iter().find_map(|l| l.2.clone()));
    let mut urls = Vec::new();
    let mut weights = Vec::new();
    for (at, target, url, weight) in lines {
        let url = match url {
            Some(u) => u,
            None => {
                let host = host
                    .as_ref()
                    .ok_or_else(|| at(format!("{target} is a path, but no URL gives the host")))?;
                Url::parse(&format!("http://{}{target}", host.target())).map_err(|e| at(e.0))?
            }
        };
        urls.push(url);
        weights.push(weight);
    }
    if urls.is_empty() {
        return Err(Error::new("no URLs in file"));
    }
    same_target(&urls)?;
    Ok(Paths {
        base: urls[0].clone(),
        paths: urls.iter().map(|u| u.path.clone()).collect(),
        order: Order::Weighted(weights),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_weights_paths_and_comments() {
        let base = Url::parse("http://127.0.0.1:8080/").unwrap();
        let p = parse(
            "# mix\nhttp://127.0.0.1:8080/a 3\n/b\n\n/c 0.5 # cold\n",
            Some(&base),
        )
        .unwrap();
        assert_eq!(p.paths, ["/a", "/b", "/c"]);
        match p.order {
            Order::Weighted(w) => assert_eq!(w, [3.0, 1.0, 0.5]),
            Order::Sequence(_) => panic!("weighted expected"),
        }
    }

    #[test]
    fn reports_bad_lines_with_numbers() {
        let e = parse("http://h/a\nhttp://h/b -1\n", None).unwrap_err();
        assert!(e.0.starts_with("line 2: weight"), "{e}");
        assert!(parse("/a\n", None).is_err());
        assert!(parse("\n# nothing\n", None).is_err());
        assert!(parse("http://h/a x y\n", None).is_err());
    }
}
