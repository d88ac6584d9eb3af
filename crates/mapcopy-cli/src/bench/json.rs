//! results.json's values: serde_json's, built with a few helpers.

pub use serde_json::Value as Json;

/// An object from `(key, value)` pairs, in that order.
pub fn obj<const N: usize>(fields: [(&str, Json); N]) -> Json {
    Json::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// A number, or `null` for `None` and non-finite values.
pub fn num(x: Option<f64>) -> Json {
    x.and_then(serde_json::Number::from_f64)
        .map_or(Json::Null, Json::Number)
}

/// A number (`null` if not finite).
pub fn float(x: f64) -> Json {
    num(Some(x))
}

/// An integer.
pub fn int(i: i64) -> Json {
    Json::from(i)
}

/// A string, or `null` for `None`.
pub fn opt_str(s: Option<&str>) -> Json {
    s.map_or(Json::Null, |s| Json::String(s.to_string()))
}

/// Indented text.
pub fn pretty(j: &Json) -> String {
    serde_json::to_string_pretty(j).expect("a JSON value always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_nests() {
        let j = obj([
            ("a", Json::String("q\"\\\n\u{1}".into())),
            ("b", Json::Array(vec![int(1), float(0.5), num(None)])),
            ("c", float(f64::NAN)),
            ("d", obj([])),
        ]);
        assert_eq!(
            pretty(&j),
            "{\n  \"a\": \"q\\\"\\\\\\n\\u0001\",\n  \"b\": [\n    1,\n    0.5,\n    null\n  ],\n  \"c\": null,\n  \"d\": {}\n}"
        );
    }
}
