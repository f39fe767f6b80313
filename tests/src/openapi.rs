//! Checks real answers against the API's OpenAPI document: that the status is one the
//! operation documents, and that a JSON body matches the documented schema (the
//! subset of JSON Schema 2020-12 the document uses: `$ref`, `allOf`, `oneOf`, `type`
//! as a name or a list of names, `properties`, `required`, `additionalProperties`,
//! `items`, `enum`; formats, patterns and bounds are not checked).

use serde_json::{Map, Value};

#[derive(Debug)]
pub struct Contract {
    document: Value,
}

impl Contract {
    pub fn new(document: Value) -> Self {
        Self { document }
    }

    /// Checks one answer of `method` on the documented `path` (with `{id}`-style
    /// parameters as documented).
    pub fn check(&self, method: &str, path: &str, status: u16, body: Option<&Value>) -> Result<(), String> {
        let operation = &self.document["paths"][path][method.to_ascii_lowercase()];
        if operation.is_null() {
            return Err(format!("{method} {path} is not documented"));
        }
        let response = self.resolve(&operation["responses"][status.to_string()]);
        if response.is_null() {
            return Err(format!("{method} {path} answered {status}, which it does not document"));
        }
        let schema = &response["content"]["application/json"]["schema"];
        match (body, schema.is_null()) {
            (Some(body), false) => {
                self.validate(body, schema, "$").map_err(|e| format!("{method} {path} {status}: {e}"))
            }
            _ => Ok(()),
        }
    }

    fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value["$ref"].as_str().and_then(|r| r.strip_prefix("#/")) {
            Some(pointer) => self.resolve(self.document.pointer(&format!("/{pointer}")).unwrap_or(&Value::Null)),
            None => value,
        }
    }

    fn validate(&self, value: &Value, schema: &Value, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema);
        if let Some(parts) = schema["allOf"].as_array() {
            return self.validate(value, &self.merge(parts), at);
        }
        if let Some(one) = schema["oneOf"].as_array()
            && !one.iter().any(|part| self.validate(value, part, at).is_ok())
        {
            return Err(format!("{at}: {value} matches none of oneOf"));
        }
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(value)
        {
            return Err(format!("{at}: {value} is not one of {allowed:?}"));
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.is_empty() && !types.iter().any(|t| is_of_type(value, t)) {
            return Err(format!("{at}: {value} is not of type {}", schema["type"]));
        }
        if let Some(object) = value.as_object() {
            self.validate_object(object, schema, at)?;
        }
        if let Some(items) = value.as_array() {
            for (i, item) in items.iter().enumerate() {
                self.validate(item, &schema["items"], &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }

    /// An object with documented properties is closed unless its schema says
    /// otherwise: a field the document does not name is an error, so that the API
    /// cannot send what its document does not describe.
    fn validate_object(&self, object: &Map<String, Value>, schema: &Value, at: &str) -> Result<(), String> {
        for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !object.contains_key(name) {
                return Err(format!("{at}: required {name} is missing"));
            }
        }
        let properties = schema["properties"].as_object();
        for (name, field) in object {
            let at = format!("{at}.{name}");
            match (properties.and_then(|p| p.get(name)), &schema["additionalProperties"]) {
                (Some(property), _) => self.validate(field, property, &at)?,
                (None, Value::Object(extra)) => self.validate(field, &Value::Object(extra.clone()), &at)?,
                (None, Value::Bool(true)) => {}
                (None, Value::Null) if properties.is_none() => {}
                (None, _) => return Err(format!("{at} is not documented")),
            }
        }
        Ok(())
    }

    /// The parts of an `allOf` describe one object together: one schema with every
    /// part's properties and required fields.
    fn merge(&self, parts: &[Value]) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for part in parts {
            let part = self.resolve(part);
            let part = match part["allOf"].as_array() {
                Some(inner) => self.merge(inner),
                None => part.clone(),
            };
            properties.extend(part["properties"].as_object().cloned().unwrap_or_default());
            required.extend(part["required"].as_array().cloned().unwrap_or_default());
        }
        serde_json::json!({"type": "object", "properties": properties, "required": required})
    }
}

fn is_of_type(value: &Value, name: &str) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn contract() -> Contract {
        Contract::new(json!({
            "paths": {"/x": {"get": {"responses": {"200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/X"}}}}}}}},
            "components": {"schemas": {
                "X": {"allOf": [{"$ref": "#/components/schemas/Base"}, {
                    "type": "object", "required": ["id"],
                    "properties": {
                        "id": {"type": "integer"},
                        "state": {"type": "string", "enum": ["a", "b"]},
                        "note": {"type": ["string", "null"]},
                        "kind": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Kind"}]},
                        "free": {"type": "object"}
                    }
                }]},
                "Base": {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}}},
                "Kind": {"type": "string", "enum": ["k"]}
            }}
        }))
    }

    #[test]
    fn answers_that_differ_from_the_document_are_caught() {
        let c = contract();
        let full = json!({"id": 1, "state": "a", "note": null, "kind": "k", "tags": ["t"], "free": {"any": 1}});
        assert_eq!(c.check("GET", "/x", 200, Some(&full)), Ok(()));
        assert_eq!(c.check("GET", "/x", 200, Some(&json!({"id": 1, "kind": null}))), Ok(()));
        for (status, body, why) in [
            (404, json!({}), "does not document"),
            (200, json!({"state": "a"}), "required id is missing"),
            (200, json!({"id": "1"}), "is not of type"),
            (200, json!({"id": 1, "state": "c"}), "is not one of"),
            (200, json!({"id": 1, "extra": true}), "extra is not documented"),
            (200, json!({"id": null}), "is not of type"),
            (200, json!({"id": 1, "kind": "j"}), "matches none of oneOf"),
            (200, json!({"id": 1, "tags": [1]}), "$.tags[0]"),
        ] {
            let err = c.check("GET", "/x", status, Some(&body)).unwrap_err();
            assert!(err.contains(why), "{body}: {err}");
        }
        assert!(c.check("POST", "/x", 200, None).unwrap_err().contains("not documented"));
    }
}
