//! The report as SARIF 2.1.0 (OASIS Static Analysis Results Interchange Format), for code-scanning UIs:
//! one run, a rule per check, a result per finding located at the policy's manifest file (when known) and
//! logically at `policy-id` / field.

use serde_json::{Value, json};

use super::{Check, PolicyRef, Report, Severity};

/// The SARIF version written.
pub const VERSION: &str = "2.1.0";

/// The schema URI written in `$schema`.
pub const SCHEMA_URI: &str = "https://json.schemastore.org/sarif-2.1.0.json";

const fn level(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "note",
    }
}

/// Renders `report`; `locate` gives the file (a relative URI) a policy was read from, if known.
#[must_use]
pub fn render(report: &Report, locate: &dyn Fn(&PolicyRef) -> Option<String>) -> Value {
    let rules: Vec<Value> = Check::ALL
        .iter()
        .map(|c| {
            json!({
                "id": c.id(),
                "shortDescription": {"text": c.title()},
                "defaultConfiguration": {"level": level(c.severity())},
            })
        })
        .collect();
    let results: Vec<Value> = report
        .findings
        .iter()
        .map(|f| {
            let rule_index = Check::ALL.iter().position(|c| *c == f.check);
            let mut location = serde_json::Map::new();
            if let Some(p) = &f.policy {
                if let Some(uri) = locate(p) {
                    location.insert(
                        "physicalLocation".into(),
                        json!({"artifactLocation": {"uri": uri}}),
                    );
                }
                let fqn = match &f.place.field {
                    Some(field) => format!("{}.{field}", p.id),
                    None => p.id.clone(),
                };
                location.insert(
                    "logicalLocations".into(),
                    json!([{"name": p.id, "fullyQualifiedName": fqn, "kind": "resource"}]),
                );
            }
            let mut result = json!({
                "ruleId": f.check.id(),
                "level": level(f.severity),
                "message": {"text": format!("{} Fix: {}", f.message, f.fix)},
                "properties": {"objects": f.objects, "fix": f.fix},
            });
            if let Some(obj) = result.as_object_mut() {
                if let Some(i) = rule_index {
                    obj.insert("ruleIndex".into(), json!(i));
                }
                if !location.is_empty() {
                    obj.insert("locations".into(), json!([Value::Object(location)]));
                }
            }
            result
        })
        .collect();
    json!({
        "$schema": SCHEMA_URI,
        "version": VERSION,
        "runs": [{
            "tool": {"driver": {
                "name": "observer",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "results": results,
        }],
    })
}
