//! Django's `staticfiles.json` (ManifestStaticFilesStorage): which files are content-hashed.

use std::collections::HashSet;

use serde_json::Value;

/// What the manifest tells a file server.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The hashed names (the values of `paths`), relative to STATIC_ROOT, `/`-separated.
    pub hashed: HashSet<String>,
    /// The manifest's own `hash` (version 1.1), if any: changes on every collectstatic.
    pub hash: Option<String>,
}

/// A manifest that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError(pub String);

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ManifestError {}

/// Parses the bytes of a `staticfiles.json` (versions "1.0" and "1.1").
///
/// Django itself refuses a manifest whose `version` is missing or unknown, so this does too:
/// guessing at a future layout could mark a file immutable that is not. Keys other than
/// `paths`, `version` and `hash` are ignored. A `hash` that is `null` counts as absent.
pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let err = |msg: String| Err(ManifestError(msg));
    let root: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return err(format!("not JSON: {e}")),
    };
    let Value::Object(root) = root else {
        return err(format!("not a JSON object but {}", kind(&root)));
    };

    match root.get("version") {
        Some(Value::String(v)) if v == "1.0" || v == "1.1" => {}
        Some(Value::String(v)) => return err(format!("unsupported manifest version {v:?}")),
        Some(other) => return err(format!("\"version\" is {}, not a string", kind(other))),
        None => return err(String::from("no \"version\"")),
    }

    let paths = match root.get("paths") {
        Some(Value::Object(paths)) => paths,
        Some(other) => return err(format!("\"paths\" is {}, not an object", kind(other))),
        None => return err(String::from("no \"paths\" object")),
    };
    let mut hashed = HashSet::with_capacity(paths.len());
    for (name, value) in paths {
        match value {
            Value::String(h) => {
                hashed.insert(h.clone());
            }
            other => {
                return err(format!(
                    "\"paths\" entry {name:?} is {}, not a string",
                    kind(other)
                ));
            }
        }
    }

    let hash = match root.get("hash") {
        None | Some(Value::Null) => None,
        Some(Value::String(h)) => Some(h.clone()),
        Some(other) => return err(format!("\"hash\" is {}, not a string", kind(other))),
    };

    Ok(Manifest { hashed, hash })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn error(json: &str) -> String {
        match parse(json.as_bytes()) {
            Ok(m) => panic!("{json} parsed as {m:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn version_1_1_with_hash() {
        let json = r#"{"paths": {"css/app.css": "css/app.3f2a9c1b7d4e.css",
                                 "js/app.js": "js/app.0a1b2c3d4e5f.js"},
                       "version": "1.1", "hash": "abc123"}"#;
        let m = parse(json.as_bytes()).unwrap();
        assert_eq!(
            m.hashed,
            set(&["css/app.3f2a9c1b7d4e.css", "js/app.0a1b2c3d4e5f.js"])
        );
        assert_eq!(m.hash.as_deref(), Some("abc123"));
    }

    #[test]
    fn version_1_0_without_hash() {
        let m = parse(br#"{"paths": {"a.css": "a.123456789abc.css"}, "version": "1.0"}"#).unwrap();
        assert_eq!(m.hashed, set(&["a.123456789abc.css"]));
        assert_eq!(m.hash, None);
    }

    #[test]
    fn extra_keys_and_null_hash_are_fine() {
        let json = br#"{"version": "1.1", "paths": {}, "hash": null, "generator": {"x": [1]}}"#;
        assert_eq!(parse(json).unwrap(), Manifest::default());
    }

    #[test]
    fn duplicate_values_collapse() {
        let json = br#"{"version": "1.1", "paths": {"a.css": "a.1.css", "b/../a.css": "a.1.css"}}"#;
        assert_eq!(parse(json).unwrap().hashed, set(&["a.1.css"]));
    }

    #[test]
    fn unicode_names() {
        let json = r#"{"version": "1.1", "paths": {"caf\u00e9.css": "café.abc.css"}}"#;
        assert_eq!(
            parse(json.as_bytes()).unwrap().hashed,
            set(&["café.abc.css"])
        );
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(error("").starts_with("not JSON: "));
        assert!(error("{\"paths\": {").starts_with("not JSON: "));
        assert!(error("{} trailing").starts_with("not JSON: "));
        assert_eq!(error("[]"), "not a JSON object but an array");
        assert_eq!(error(r#"{"paths": {}}"#), "no \"version\"");
        assert_eq!(
            error(r#"{"paths": {}, "version": "2.0"}"#),
            "unsupported manifest version \"2.0\""
        );
        assert_eq!(
            error(r#"{"paths": {}, "version": 1.0}"#),
            "\"version\" is a number, not a string"
        );
        assert_eq!(error(r#"{"version": "1.1"}"#), "no \"paths\" object");
        assert_eq!(
            error(r#"{"version": "1.1", "paths": []}"#),
            "\"paths\" is an array, not an object"
        );
        assert_eq!(
            error(r#"{"version": "1.1", "paths": {"a.css": 3}}"#),
            "\"paths\" entry \"a.css\" is a number, not a string"
        );
        assert_eq!(
            error(r#"{"version": "1.1", "paths": {}, "hash": 7}"#),
            "\"hash\" is a number, not a string"
        );
    }

    #[test]
    fn invalid_utf8_is_not_json() {
        assert!(
            error_bytes(b"{\"version\": \"1.1\", \"paths\": {\"a\": \"\xff\"}}")
                .starts_with("not JSON: ")
        );
    }

    fn error_bytes(b: &[u8]) -> String {
        parse(b).unwrap_err().to_string()
    }
}
