//! `nuki-exporter config show`: the effective configuration, one key a line, with where each
//! value came from (built-in default, the TOML file, an environment variable) and the webhook
//! secrets redacted. Token and secret files are shown by path, never read.

use std::path::Path;

use figment::Figment;
use figment::Source;
use serde_json::Value;

use crate::Config;
use crate::config::{ConfigError, ENV_PREFIX};

/// Keys whose values are secrets themselves (the others name files).
const SECRET_KEYS: &[&str] = &["webhook.secrets"];
const REDACTED: &str = "<redacted>";

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(String),
    Environment(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::File(path) => write!(f, "file {path}"),
            Self::Environment(variable) => write!(f, "environment {variable}"),
        }
    }
}

/// One key of the effective configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Dotted key, as in the documentation (`webhook.listen`).
    pub key: String,
    /// The value as TOML would write it; secrets redacted.
    pub value: String,
    pub origin: Origin,
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {}  # {}", self.key, self.value, self.origin)
    }
}

/// Loads the configuration as start-up does (so an invalid one is refused the same way) and
/// lists every key with its value and origin.
pub fn entries(file: Option<&Path>) -> Result<Vec<Entry>, ConfigError> {
    let config = Config::load(file)?;
    let figment = Config::sources(file)?;
    let value = serde_json::to_value(&config).expect("the configuration serialises");
    let mut entries = Vec::new();
    collect(&figment, "", &value, &mut entries);
    Ok(entries)
}

/// Walks the sections; a section's leaves (and whole lists, `bridges` included) are entries.
fn collect(figment: &Figment, prefix: &str, value: &Value, entries: &mut Vec<Entry>) {
    let Value::Object(fields) = value else {
        return;
    };
    for (name, field) in fields {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        if field.is_object() {
            collect(figment, &key, field, entries);
            continue;
        }
        // A list of tables (`[[bridges]]`): one line per table.
        if let Some(tables) = field
            .as_array()
            .filter(|items| items.iter().all(Value::is_object))
        {
            if !tables.is_empty() {
                let origin = origin(figment, &key);
                entries.extend(tables.iter().enumerate().map(|(index, table)| Entry {
                    key: format!("{key}[{index}]"),
                    value: table.to_string(),
                    origin: origin.clone(),
                }));
                continue;
            }
        }
        entries.push(Entry {
            value: shown(&key, field),
            origin: origin(figment, &key),
            key,
        });
    }
}

fn shown(key: &str, value: &Value) -> String {
    match value {
        Value::Null => "(unset)".to_owned(),
        Value::Array(items) if SECRET_KEYS.contains(&key) => {
            let redacted: Vec<Value> = items.iter().map(|_| Value::from(REDACTED)).collect();
            Value::from(redacted).to_string()
        }
        other => other.to_string(),
    }
}

fn origin(figment: &Figment, key: &str) -> Origin {
    let Some(metadata) = figment.find_metadata(key) else {
        return Origin::Default;
    };
    match &metadata.source {
        Some(Source::File(path)) => Origin::File(path.display().to_string()),
        _ if metadata.name.contains("environment") => Origin::Environment(format!(
            "{ENV_PREFIX}{}",
            key.to_ascii_uppercase().replace('.', "__")
        )),
        _ => Origin::Default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_other_lists_shown() {
        let secrets = serde_json::json!(["s3cr3t", "other"]);
        assert_eq!(
            shown("webhook.secrets", &secrets),
            r#"["<redacted>","<redacted>"]"#
        );
        assert_eq!(
            shown("webhook.secret_files", &serde_json::json!(["/run/s"])),
            r#"["/run/s"]"#
        );
        assert_eq!(shown("forward.url", &Value::Null), "(unset)");
    }

    #[test]
    fn an_entry_is_one_line_with_its_origin() {
        let entry = Entry {
            key: "webhook.listen".into(),
            value: r#""127.0.0.1:8080""#.into(),
            origin: Origin::Environment("NUKI_EXPORTER_WEBHOOK__LISTEN".into()),
        };
        assert_eq!(
            entry.to_string(),
            r#"webhook.listen = "127.0.0.1:8080"  # environment NUKI_EXPORTER_WEBHOOK__LISTEN"#
        );
    }
}
