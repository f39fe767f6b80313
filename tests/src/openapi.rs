//! Checks real answers against the API's OpenAPI document: that the status is one the
//! operation documents, and that a JSON body matches the documented schema (the
//! subset of JSON Schema the document uses: `$ref`, `allOf`, `oneOf`, `type` with
//! `nullable`, `properties`, `required`, `additionalProperties: false`, `items`,
//! `enum`; formats and patterns are not checked).

use serde_json::Value;

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
        if let Some(all) = schema["allOf"].as_array() {
            for part in all {
                self.validate(value, part, at)?;
            }
        }
        if let Some(one) = schema["oneOf"].as_array()
            && !one.iter().any(|part| self.validate(value, part, at).is_ok())
        {
            return Err(format!("{at}: {value} matches none of oneOf"));
        }
        if value.is_null() {
            return if schema["nullable"] == true || schema["type"].is_null() {
                Ok(())
            } else {
                Err(format!("{at} is null, which is not nullable"))
            };
        }
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(value)
        {
            return Err(format!("{at}: {value} is not one of {allowed:?}"));
        }
        let type_ok = match schema["type"].as_str() {
            None => true,
            Some("object") => value.is_object(),
            Some("array") => value.is_array(),
            Some("string") => value.is_string(),
            Some("integer") => value.is_i64() || value.is_u64(),
            Some("number") => value.is_number(),
            Some("boolean") => value.is_boolean(),
            Some(other) => return Err(format!("{at}: the document uses type {other}, which this check does not know")),
        };
        if !type_ok {
            return Err(format!("{at}: {value} is not of type {}", schema["type"]));
        }
        if let Some(object) = value.as_object() {
            let properties = schema["properties"].as_object();
            for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    return Err(format!("{at}: required {name} is missing"));
                }
            }
            for (name, field) in object {
                match properties.and_then(|p| p.get(name)) {
                    Some(property) => self.validate(field, property, &format!("{at}.{name}"))?,
                    None if schema["additionalProperties"] == false => {
                        return Err(format!("{at}: {name} is not documented"));
                    }
                    None => {
                        if let Some(extra) = schema["additionalProperties"].as_object() {
                            self.validate(field, &Value::Object(extra.clone()), &format!("{at}.{name}"))?;
                        }
                    }
                }
            }
        }
        if let Some(items) = value.as_array() {
            for (i, item) in items.iter().enumerate() {
                self.validate(item, &schema["items"], &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
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
            "components": {"schemas": {"X": {
                "type": "object", "additionalProperties": false, "required": ["id"],
                "properties": {"id": {"type": "integer"}, "state": {"type": "string", "enum": ["a", "b"]}, "note": {"type": "string", "nullable": true}}
            }}}
        }))
    }

    #[test]
    fn answers_that_differ_from_the_document_are_caught() {
        let c = contract();
        assert!(c.check("GET", "/x", 200, Some(&json!({"id": 1, "state": "a", "note": null}))).is_ok());
        for (status, body, why) in [
            (404, json!({}), "does not document"),
            (200, json!({"state": "a"}), "required id is missing"),
            (200, json!({"id": "1"}), "is not of type"),
            (200, json!({"id": 1, "state": "c"}), "is not one of"),
            (200, json!({"id": 1, "extra": true}), "extra is not documented"),
            (200, json!({"id": null}), "not nullable"),
        ] {
            let err = c.check("GET", "/x", status, Some(&body)).unwrap_err();
            assert!(err.contains(why), "{body}: {err}");
        }
        assert!(c.check("POST", "/x", 200, None).unwrap_err().contains("not documented"));
    }
}
