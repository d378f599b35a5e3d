//! Real reports validate against `loadgen/schema.json`. The validator is a
//! small one for the keywords the schema uses, and it is strict: an output
//! field the schema does not document is an error, so the two cannot drift.

mod common;

use serde_json::Value;

use common::{Reply, Server, run, run_json, temp_path};

fn schema() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.is_u64() || v.is_i64(),
        _ => panic!("schema uses unknown type {t}"),
    }
}

/// Appends to `errs` every way `v` breaks `s`; `root` resolves `$ref`s.
fn validate(root: &Value, s: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let target = if r == "#" {
            root
        } else {
            root.pointer(&r[1..]).expect("$ref resolves")
        };
        return validate(root, target, v, at, errs);
    }
    match s.get("type") {
        Some(Value::String(t)) if !type_ok(t, v) => {
            errs.push(format!("{at}: expected {t}, got {v}"))
        }
        Some(Value::Array(ts)) if !ts.iter().any(|t| type_ok(t.as_str().unwrap(), v)) => {
            errs.push(format!("{at}: expected one of {ts:?}, got {v}"))
        }
        _ => {}
    }
    if let Some(c) = s.get("const") {
        if c != v {
            errs.push(format!("{at}: expected {c}, got {v}"));
        }
    }
    if let Some(Value::Array(options)) = s.get("enum") {
        if !options.contains(v) {
            errs.push(format!("{at}: {v} not in {options:?}"));
        }
    }
    if let (Some(min), Some(x)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if x < min {
            errs.push(format!("{at}: {x} < minimum {min}"));
        }
    }
    if let Value::Object(obj) = v {
        for req in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !obj.contains_key(req.as_str().unwrap()) {
                errs.push(format!("{at}: missing required {req}"));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, val) in obj {
            let sub = format!("{at}/{k}");
            match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                (Some(ps), _) => validate(root, ps, val, &sub, errs),
                (None, Some(Value::Bool(false))) => errs.push(format!("{sub}: not allowed")),
                (None, Some(extra @ Value::Object(_))) => validate(root, extra, val, &sub, errs),
                // Strict: whatever the tool writes must be documented.
                (None, _) if props.is_some() => {
                    errs.push(format!("{sub}: not documented in the schema"))
                }
                (None, _) => {}
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (v, s.get("items")) {
        for (i, item) in items.iter().enumerate() {
            validate(root, item_schema, item, &format!("{at}/{i}"), errs);
        }
    }
}

fn assert_valid(s: &Value, v: &Value) {
    let root = schema();
    let mut errs = Vec::new();
    validate(&root, s, v, "", &mut errs);
    assert!(
        errs.is_empty(),
        "schema violations:\n{}\nin {v:#}",
        errs.join("\n")
    );
}

#[test]
fn the_validator_rejects_what_it_should() {
    let root = schema();
    let mut doc = serde_json::json!({"schema_version": 1});
    let mut errs = Vec::new();
    validate(&root, &root, &doc, "", &mut errs);
    assert!(
        errs.iter().any(|e| e.contains("missing required \"rps\"")),
        "{errs:?}"
    );
    doc["schema_version"] = 2.into();
    doc["surprise"] = true.into();
    errs.clear();
    validate(&root, &root, &doc, "", &mut errs);
    assert!(errs.iter().any(|e| e.contains("expected 1")), "{errs:?}");
    assert!(
        errs.iter().any(|e| e.contains("/surprise: not documented")),
        "{errs:?}"
    );
}

#[test]
fn run_report_with_server_section_matches_schema() {
    let server = Server::start(|_, _| Reply::ok());
    // The test server lives in this process, so this pid is the server's.
    let pid = std::process::id().to_string();
    let doc = run_json(&[
        "-c",
        "4",
        "-t",
        "2",
        "-d",
        "1s",
        "--warmup",
        "200ms",
        "--server-pid",
        &pid,
        &server.url("/x"),
    ]);
    assert_valid(&schema(), &doc);
    assert!(doc["requests"].as_u64().unwrap() > 0);
    assert_eq!(doc["server"]["pids"][0].as_u64().unwrap().to_string(), pid);
    assert!(doc["server"]["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(doc["server"]["cpu_us_per_request"].as_f64().is_some());
    // The documented histogram decodes to the same count.
    assert!(
        doc["histogram"]["data"]
            .as_str()
            .unwrap()
            .starts_with("HISTF")
    );
}

#[test]
fn open_loop_report_with_errors_matches_schema() {
    let server = Server::start(|ctx, _| {
        let n = ctx.count.load(std::sync::atomic::Ordering::Relaxed);
        Reply {
            status: if n % 2 == 0 { 503 } else { 200 },
            ..Reply::ok()
        }
    });
    let doc = run_json(&[
        "--rate",
        "200",
        "-c",
        "2",
        "-t",
        "1",
        "-d",
        "500ms",
        &server.url("/"),
    ]);
    assert_valid(&schema(), &doc);
    assert_eq!(doc["mode"], "open");
    assert!(doc["errors"]["status_5xx"].as_u64().unwrap() > 0);
}

#[test]
fn sweep_report_matches_schema() {
    let server = Server::start(|_, _| Reply::ok());
    let path = temp_path("sweep.json");
    let out = run(&[
        "sweep",
        "--slo",
        "p99=200ms",
        "--from",
        "50",
        "--to",
        "100",
        "--steps",
        "2",
        "-d",
        "500ms",
        "--warmup",
        "100ms",
        "-c",
        "2",
        "-t",
        "1",
        "--json",
        path.to_str().unwrap(),
        &server.url("/"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("capacity: 100.0 req/s"), "{stdout}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);
    let root = schema();
    assert_valid(&root["$defs"]["sweep"], &doc);
    assert_eq!(doc["capacity_rps"], 100.0);
    assert_eq!(doc["results"].as_array().unwrap().len(), 2);
}
