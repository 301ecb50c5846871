//! YAML files as JSON values: every document of a stream, with `<<:` merge keys applied
//! (docker-compose.yml uses them), so tests can index with `value["a"]["b"]`.

use serde::Deserialize;
use serde_json::Value;

/// Every non-empty document of `text`.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let mut v = serde_yaml::Value::deserialize(doc).map_err(|e| e.to_string())?;
        v.apply_merge().map_err(|e| e.to_string())?;
        if v.is_null() {
            continue;
        }
        out.push(serde_json::to_value(v).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// The one document of `text`.
pub fn document(text: &str) -> Result<Value, String> {
    let mut docs = documents(text)?;
    match docs.len() {
        1 => Ok(docs.remove(0)),
        n => Err(format!("expected one YAML document, found {n}")),
    }
}
