//! The example configuration (deploy/nuki-exporter/config.toml) says it has every key: it does,
//! and each commented-out example is valid.

use std::collections::BTreeSet;

use figment::Figment;
use figment::providers::{Format, Toml};
use nuki_exporter::Config;
use nuki_exporter::config::{BridgeConfig, BridgeLeaseConfig};
use serde_json::Value;

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/nuki-exporter/config.toml"
);

/// Dotted keys of every leaf; a list of tables contributes `name[].key`.
fn keys(prefix: &str, value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                let key = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                keys(&key, field, out);
            }
        }
        Value::Array(items) if items.first().is_some_and(Value::is_object) => {
            for item in items {
                keys(&format!("{prefix}[]"), item, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

/// The example with every commented-out key (`# key = …`) and table header switched on.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| {
            let rest = line.strip_prefix("# ").unwrap_or(line);
            let is_key = rest.split_once(" = ").is_some_and(|(key, _)| {
                !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
            if is_key || rest == "[[bridges]]" || rest == "[bridge_lease]" {
                rest
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_example_configuration_has_every_key_and_each_commented_one_is_valid() {
    let text = uncommented(&std::fs::read_to_string(EXAMPLE).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, &text).unwrap();
    Config::load(Some(&file))
        .unwrap_or_else(|e| panic!("the example with every key on: {e}\n{text}"));

    let written: Value = Figment::from(Toml::string(&text)).extract().unwrap();
    let mut in_example = BTreeSet::new();
    keys("", &written, &mut in_example);

    let mut config = serde_json::to_value(Config::default()).unwrap();
    config["bridges"] = serde_json::json!([BridgeConfig::new(
        "hall",
        "http://192.168.1.20:8080",
        "/t".into()
    )]);
    // An optional section: unset by default, its keys are those of a set one.
    config["bridge_lease"] = serde_json::to_value(BridgeLeaseConfig::default()).unwrap();
    let mut in_struct = BTreeSet::new();
    keys("", &config, &mut in_struct);

    let missing: Vec<_> = in_struct.difference(&in_example).collect();
    let unknown: Vec<_> = in_example.difference(&in_struct).collect();
    assert!(missing.is_empty(), "keys the example lacks: {missing:?}");
    assert!(
        unknown.is_empty(),
        "keys the example has that the configuration does not: {unknown:?}"
    );
}
