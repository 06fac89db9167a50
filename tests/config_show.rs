//! `nuki-exporter config show`: every key with its value and origin; secrets never printed.

mod common;

use common::{exporter_command, run, run_ok};

#[test]
fn config_show_names_the_origin_of_each_value_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        "[metrics]\nlisten = \"127.0.0.1:9999\"\n\n[[bridges]]\nname = \"hall\"\nurl = \"http://10.0.0.5:8080\"\ntoken_file = \"/run/secrets/bridge\"\n",
    )
    .unwrap();
    let output = run_ok(
        exporter_command()
            .arg("--config.file")
            .arg(&file)
            .args(["config", "show"])
            .env("NUKI_EXPORTER_WEBHOOK__SECRETS", "[s3cr3t-one,s3cr3t-two]"),
    );
    let line = |key: &str| {
        output
            .lines()
            .find(|line| line.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no line for {key}:\n{output}"))
            .to_owned()
    };
    let file = file.display();
    assert_eq!(
        line("metrics.listen"),
        format!("metrics.listen = \"127.0.0.1:9999\"  # file {file}")
    );
    assert_eq!(
        line("webhook.secrets"),
        "webhook.secrets = [\"<redacted>\",\"<redacted>\"]  # environment NUKI_EXPORTER_WEBHOOK__SECRETS"
    );
    assert_eq!(
        line("webhook.listen"),
        "webhook.listen = \"0.0.0.0:10180\"  # default"
    );
    assert_eq!(
        line("api.token_file"),
        "api.token_file = (unset)  # default"
    );
    assert!(
        line("bridges[0]").contains("\"url\":\"http://10.0.0.5:8080\""),
        "{output}"
    );
    assert!(
        line("bridges[0]").ends_with(&format!("# file {file}")),
        "{output}"
    );
    assert!(
        !output.contains("s3cr3t"),
        "a secret was printed:\n{output}"
    );
}

#[test]
fn config_show_refuses_an_invalid_configuration_like_start_up() {
    let ran = run(exporter_command()
        .args(["config", "show"])
        .env("NUKI_EXPORTER_LIMITS__MAX_BODY_BYTES", "lots"));
    assert!(!ran.ok);
    assert!(
        ran.stderr.contains("limits.max_body_bytes"),
        "{}",
        ran.stderr
    );
}
