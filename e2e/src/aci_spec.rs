//! The official ACI REST spec (api-version 2023-05-01, copied unchanged into
//! `vk-node/tests/aci-spec/`) as a request validator: the spec test checks every body the
//! translation builds with it, and the fake ARM server refuses any PUT it rejects.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The vendored spec's folder.
pub fn spec_dir() -> PathBuf {
    crate::repo_root().join("vk-node/tests/aci-spec")
}

/// A JSON file, parsed (panics on a broken fixture).
pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The spec's definitions made strict for requests: an object schema with `properties`
/// refuses properties it does not name, and read-only properties may not be sent.
pub fn strict_definitions() -> Value {
    let spec = read_json(&spec_dir().join("containerInstance.json"));
    let mut definitions = spec["definitions"].clone();
    for (_, schema) in definitions.as_object_mut().unwrap() {
        let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
            continue;
        };
        for (_, property) in properties.iter_mut() {
            if property.get("readOnly") == Some(&json!(true)) {
                *property = json!({"not": {}});
            }
        }
        if schema.get("additionalProperties").is_none() {
            schema["additionalProperties"] = json!(false);
        }
    }
    definitions
}

fn validator(definitions: &Value, name: &str) -> jsonschema::Validator {
    let schema = json!({"definitions": definitions, "$ref": format!("#/definitions/{name}")});
    jsonschema::draft4::new(&schema).expect("the spec compiles")
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect()
}

/// The errors of `instance` against definition `name`.
pub fn violations(definitions: &Value, name: &str, instance: &Value) -> Vec<String> {
    errors(&validator(definitions, name), instance)
}

/// A PUT body's two parts: `Resource` (location, tags, zones) and
/// `ContainerGroupProperties` (identity, properties), and any key that is in neither.
fn split_body(body: &Value) -> (Value, Value, Vec<String>) {
    let (mut resource, mut group) = (serde_json::Map::new(), serde_json::Map::new());
    let mut problems = Vec::new();
    let Some(object) = body.as_object() else {
        return (Value::Null, Value::Null, vec!["/: not an object".into()]);
    };
    for (key, value) in object {
        match key.as_str() {
            "location" | "tags" | "zones" | "id" | "name" | "type" => {
                resource.insert(key.clone(), value.clone());
            }
            "identity" | "properties" => {
                group.insert(key.clone(), value.clone());
            }
            other => problems.push(format!(
                "/{other}: not in Resource nor ContainerGroupProperties"
            )),
        }
    }
    (Value::Object(resource), Value::Object(group), problems)
}

/// A PUT body is `Resource` plus `ContainerGroupProperties`: each part against its
/// schema, and nothing else.
pub fn body_violations(definitions: &Value, body: &Value) -> Vec<String> {
    RequestValidator::from_definitions(definitions).body_violations(body)
}

/// Both schemas compiled once, for a server that checks every request.
pub struct RequestValidator {
    resource: jsonschema::Validator,
    group: jsonschema::Validator,
    exec: jsonschema::Validator,
}

impl RequestValidator {
    /// From the strict definitions of the vendored spec.
    pub fn new() -> Self {
        Self::from_definitions(&strict_definitions())
    }

    fn from_definitions(definitions: &Value) -> Self {
        Self {
            resource: validator(definitions, "Resource"),
            group: validator(definitions, "ContainerGroupProperties"),
            exec: validator(definitions, "ContainerExecRequest"),
        }
    }

    /// What is wrong with a container-group PUT body (empty: nothing).
    pub fn body_violations(&self, body: &Value) -> Vec<String> {
        let (resource, group, mut problems) = split_body(body);
        problems.extend(errors(&self.resource, &resource));
        problems.extend(errors(&self.group, &group));
        problems
    }
}

impl RequestValidator {
    /// What is wrong with an exec POST body against `ContainerExecRequest`.
    pub fn exec_violations(&self, body: &Value) -> Vec<String> {
        errors(&self.exec, body)
    }
}

impl Default for RequestValidator {
    fn default() -> Self {
        Self::new()
    }
}
