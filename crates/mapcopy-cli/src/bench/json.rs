//! Just enough JSON writing for `results.json` (no serde in the CLI's
//! dependency tree for one file).

use std::fmt::{self, Write};

/// A JSON value.
#[derive(Clone, Debug)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Int(i64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// An object from `(key, value)` pairs.
    pub fn obj<const N: usize>(fields: [(&str, Json); N]) -> Json {
        Json::Obj(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    /// `Num`, or `Null` for `None` and non-finite values.
    pub fn num(x: Option<f64>) -> Json {
        match x {
            Some(x) if x.is_finite() => Json::Num(x),
            _ => Json::Null,
        }
    }

    /// `Str`, or `Null` for `None`.
    pub fn opt_str(s: Option<&str>) -> Json {
        s.map_or(Json::Null, |s| Json::Str(s.to_string()))
    }

    fn write(&self, f: &mut fmt::Formatter<'_>, indent: usize) -> fmt::Result {
        let pad = |f: &mut fmt::Formatter<'_>, n: usize| write!(f, "{:1$}", "", n);
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Num(x) if x.is_finite() => write!(f, "{x:?}"),
            Json::Num(_) => f.write_str("null"),
            Json::Int(i) => write!(f, "{i}"),
            Json::Str(s) => write_str(f, s),
            Json::Arr(items) if items.is_empty() => f.write_str("[]"),
            Json::Arr(items) => {
                f.write_str("[\n")?;
                for (i, item) in items.iter().enumerate() {
                    pad(f, indent + 2)?;
                    item.write(f, indent + 2)?;
                    f.write_str(if i + 1 < items.len() { ",\n" } else { "\n" })?;
                }
                pad(f, indent)?;
                f.write_char(']')
            }
            Json::Obj(fields) if fields.is_empty() => f.write_str("{}"),
            Json::Obj(fields) => {
                f.write_str("{\n")?;
                for (i, (k, v)) in fields.iter().enumerate() {
                    pad(f, indent + 2)?;
                    write_str(f, k)?;
                    f.write_str(": ")?;
                    v.write(f, indent + 2)?;
                    f.write_str(if i + 1 < fields.len() { ",\n" } else { "\n" })?;
                }
                pad(f, indent)?;
                f.write_char('}')
            }
        }
    }
}

fn write_str(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::Json;

    #[test]
    fn escapes_and_nests() {
        let j = Json::obj([
            ("a", Json::Str("q\"\\\n\u{1}".into())),
            (
                "b",
                Json::Arr(vec![Json::Int(1), Json::Num(0.5), Json::num(None)]),
            ),
            ("c", Json::Num(f64::NAN)),
            ("d", Json::Obj(vec![])),
        ]);
        let text = j.to_string();
        assert_eq!(
            text,
            "{\n  \"a\": \"q\\\"\\\\\\n\\u0001\",\n  \"b\": [\n    1,\n    0.5,\n    null\n  ],\n  \"c\": null,\n  \"d\": {}\n}"
        );
    }
}
