//! Every JSON body a test receives through [`super::Http`] is validated
//! against the schema the OpenAPI description gives for its route, method
//! and status (`default`, an error body, for a status a route does not
//! list; the error body too for a path no route matches). A body that does
//! not match fails the test that received it.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

fn openapi() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(qcapsd::api::openapi::document)
}

/// The path template of the description that `path` (no query) matches.
pub fn template_of(path: &str) -> Option<&'static str> {
    let paths = openapi()["paths"].as_object()?;
    let segs: Vec<&str> = path.split('/').collect();
    paths.keys().map(String::as_str).find(|t| {
        let ts: Vec<&str> = t.split('/').collect();
        ts.len() == segs.len()
            && ts
                .iter()
                .zip(&segs)
                .all(|(t, s)| (t.starts_with('{') && !s.is_empty()) || t == s)
    })
}

/// The response schema for a request and status, with the components it
/// refers to.
fn schema_for(method: &str, path: &str, status: u16) -> Value {
    let doc = openapi();
    let op = template_of(path).and_then(|t| doc["paths"][t].get(method.to_lowercase()));
    let response = op.and_then(|op| {
        op["responses"]
            .get(status.to_string())
            .or_else(|| op["responses"].get("default"))
    });
    let schema = match response {
        Some(r) => r["content"]["application/json"]["schema"].clone(),
        // No such route: the fallback's error body.
        None => json_ref("ErrorBody"),
    };
    assert!(
        !schema.is_null(),
        "{method} {path} answered {status} with JSON, which the description does not say"
    );
    let mut root = serde_json::json!({"allOf": [schema]});
    root["components"] = doc["components"].clone();
    root
}

fn json_ref(name: &str) -> Value {
    serde_json::json!({"$ref": format!("#/components/schemas/{name}")})
}

/// Validates `body`; panics naming the route and the first errors.
pub fn validate(method: &str, path_and_query: &str, status: u16, body: &[u8]) {
    let path = path_and_query.split('?').next().unwrap_or("");
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => panic!("{method} {path} answered {status} with invalid JSON: {e}"),
    };
    let key = format!(
        "{method} {} {status}",
        template_of(path).unwrap_or("(none)")
    );
    static VALIDATORS: OnceLock<Mutex<HashMap<String, std::sync::Arc<jsonschema::Validator>>>> =
        OnceLock::new();
    let validator = {
        let mut map = VALIDATORS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.entry(key.clone())
            .or_insert_with(|| {
                let schema = schema_for(method, path, status);
                std::sync::Arc::new(
                    jsonschema::draft202012::new(&schema)
                        .unwrap_or_else(|e| panic!("the schema for {key} does not compile: {e}")),
                )
            })
            .clone()
    };
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .take(5)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{key}: the body does not match its schema:\n  {}",
        errors.join("\n  ")
    );
    record(&key);
}

/// Route keys validated so far (for the test that every route was seen).
pub fn seen() -> Vec<String> {
    SEEN.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record(key: &str) {
    let mut s = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if !s.iter().any(|k| k == key) {
        s.push(key.to_owned());
    }
}
