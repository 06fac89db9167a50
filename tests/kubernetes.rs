//! deploy/kubernetes: every kustomization renders with `kubectl kustomize`, each object validates
//! against the Kubernetes schemas (`kubernetes-validate --strict`), the PrometheusRule carries
//! exactly the groups of alerts/nuki-exporter.rules.yml (checked by promtool too), the dashboards
//! ConfigMaps are the dashboards, and the configurations they mount are valid and fit the pods.

mod stack_support;

use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;
use serde_yaml_ng::Value;
use stack_support::*;

/// The Kubernetes version the objects are validated against.
const KUBERNETES_VERSION: &str = "1.37.0";
/// The kustomizations a user applies, and the parts they are built from.
const KUSTOMIZATIONS: [&str; 4] = [
    "base",
    "monitoring",
    "overlays/prometheus-operator",
    "overlays/sidecar",
];
/// Custom resources, which kubernetes-validate has no schema for: promtool and the checks
/// below cover them.
const CUSTOM_KINDS: [&str; 2] = ["PrometheusRule", "ServiceMonitor"];
const REGENERATE_RULES: &str = "scripts/sync-kubernetes-rules";

fn kubernetes_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn kubectl() -> PathBuf {
    tool("kubectl", "kubernetes-client")
}

/// `kubectl kustomize DIR`: the rendered objects.
fn render(kustomization: &str) -> Vec<Value> {
    let output = run(Command::new(kubectl())
        .arg("kustomize")
        .arg(kubernetes_dir().join(kustomization)));
    assert!(
        output.ok,
        "kubectl kustomize deploy/kubernetes/{kustomization} failed (needs kubectl 1.21 or later, kustomize v4+; {}):\n{}",
        kustomize_version(),
        output.stderr
    );
    let text = output.stdout;
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).expect("kustomize prints YAML"))
        .collect()
}

fn kustomize_version() -> String {
    let output = run(Command::new(kubectl()).args(["version", "--client"]));
    output
        .stdout
        .lines()
        .find(|line| line.contains("Kustomize"))
        .unwrap_or("kustomize version unknown")
        .to_owned()
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn find<'a>(objects: &'a [Value], wanted_kind: &str, wanted_name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == wanted_kind && name(o) == wanted_name)
        .unwrap_or_else(|| panic!("no {wanted_kind} {wanted_name} rendered"))
}

/// kubernetes-validate from PyPI, as scripts/test.sh installs it (a venv under target/), or
/// from PATH.
fn kubernetes_validate() -> PathBuf {
    let venv = repo().join("target/kubernetes-validate/bin/kubernetes-validate");
    if venv.is_file() {
        return venv;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("kubernetes-validate"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "kubernetes-validate is not installed: run scripts/test.sh, which installs it into \
             target/kubernetes-validate (python3 -m venv target/kubernetes-validate && \
             target/kubernetes-validate/bin/pip install kubernetes-validate)"
        )
    })
}

#[test]
fn every_kustomization_renders_and_validates_strictly_against_the_kubernetes_schemas() {
    let validator = kubernetes_validate();
    let dir = tempfile::tempdir().unwrap();
    for kustomization in KUSTOMIZATIONS {
        let objects = render(kustomization);
        assert!(!objects.is_empty(), "{kustomization} renders nothing");
        for (index, object) in objects.iter().enumerate() {
            if CUSTOM_KINDS.contains(&kind(object)) {
                continue;
            }
            let file = dir.path().join(format!(
                "{}-{index}-{}.yaml",
                kustomization.replace('/', "-"),
                kind(object)
            ));
            std::fs::write(&file, serde_yaml_ng::to_string(object).unwrap()).unwrap();
            let output = run(Command::new(&validator)
                .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
                .arg(&file));
            let report = output.output();
            // A warning is a kind without a schema: every built-in kind has one.
            assert!(
                output.ok && !report.contains("WARN"),
                "{kustomization}: {} {} does not validate against Kubernetes {KUBERNETES_VERSION}:\n{report}",
                kind(object),
                name(object)
            );
        }
    }
}

/// checkov from PyPI, as scripts/test.sh installs it (a venv under target/).
fn checkov() -> PathBuf {
    let venv = repo().join("target/checkov/bin/checkov");
    assert!(
        venv.is_file(),
        "checkov is not installed: run scripts/test.sh, which installs it into target/checkov \
         (python3 -m venv target/checkov && target/checkov/bin/pip install checkov)"
    );
    venv
}

/// The checkov checks the manifests fail on purpose (docs/security.md, "Policy scan"):
const CHOSEN_CHECKOV_FAILURES: [&str; 3] = [
    // "The default namespace should not be used": a kustomize base names no namespace, so that
    // `kubectl apply -n` or an overlay's `namespace:` puts it where the user wants.
    "CKV_K8S_21",
    // "Image should use digest": the base names the image by tag, which the user sets with
    // `kustomize edit set image` (by digest if they pin; only they know the digest they built).
    "CKV_K8S_43",
    // "Image Pull Policy should be Always": needed only for a mutable tag; same choice as above.
    "CKV_K8S_15",
];

#[test]
fn checkov_finds_nothing_but_the_documented_choices_in_any_kustomization() {
    let checkov = checkov();
    let dir = tempfile::tempdir().unwrap();
    for kustomization in KUSTOMIZATIONS {
        let file = dir
            .path()
            .join(format!("{}.yaml", kustomization.replace('/', "-")));
        let rendered: Vec<String> = render(kustomization)
            .iter()
            .map(|object| serde_yaml_ng::to_string(object).unwrap())
            .collect();
        std::fs::write(&file, rendered.join("---\n")).unwrap();
        let output = run(Command::new(&checkov)
            .args([
                "--framework",
                "kubernetes",
                "--output",
                "json",
                "--skip-download",
            ])
            .arg("--skip-check")
            .arg(CHOSEN_CHECKOV_FAILURES.join(","))
            .arg("--file")
            .arg(&file));
        let report: serde_json::Value = serde_json::from_str(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "{kustomization}: checkov printed no JSON ({e}):\n{}",
                output.output()
            )
        });
        let summary = report.get("summary").unwrap_or(&report);
        let failed: Vec<String> = report["results"]["failed_checks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|check| {
                format!(
                    "{} {} ({})",
                    check["check_id"], check["resource"], check["check_name"]
                )
            })
            .collect();
        assert!(
            failed.is_empty(),
            "{kustomization}: checkov fails\n{}",
            failed.join("\n")
        );
        assert_eq!(summary["failed"], 0, "{kustomization}: {summary}");
        assert_eq!(summary["parsing_errors"], 0, "{kustomization}: {summary}");
        if kustomization != "monitoring" {
            // Pods were checked, not an empty file.
            assert!(
                summary["passed"].as_u64().unwrap_or(0) > 50,
                "{kustomization}: {summary}"
            );
        }
    }
}

#[test]
fn every_pod_has_a_network_policy_that_admits_only_the_ingress_and_prometheus() {
    for kustomization in ["base", "overlays/prometheus-operator", "overlays/sidecar"] {
        let objects = render(kustomization);
        // The exporter's StatefulSet, or in the sidecar overlay the application's Deployment.
        let workload = objects
            .iter()
            .find(|o| matches!(kind(o), "StatefulSet" | "Deployment"))
            .unwrap_or_else(|| panic!("{kustomization}: no workload"));
        let pod_labels = &workload["spec"]["template"]["metadata"]["labels"];
        let policy = objects
            .iter()
            .find(|o| {
                kind(o) == "NetworkPolicy"
                    && o["spec"]["podSelector"]["matchLabels"]
                        .as_mapping()
                        .is_some_and(|wanted| {
                            wanted.iter().all(|(key, value)| &pod_labels[key] == value)
                        })
            })
            .unwrap_or_else(|| panic!("{kustomization}: no NetworkPolicy selects the pods"));
        assert_eq!(
            policy["spec"]["policyTypes"],
            serde_yaml_ng::from_str::<Value>("[Ingress]").unwrap()
        );
        let mut admitted = Vec::new();
        for rule in policy["spec"]["ingress"].as_sequence().unwrap() {
            let from = &rule["from"][0];
            let peer = format!(
                "{}/{}",
                from["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    .as_str()
                    .unwrap(),
                from["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                    .as_str()
                    .unwrap()
            );
            for port in rule["ports"].as_sequence().unwrap() {
                admitted.push(format!("{peer} -> {}", port["port"].as_str().unwrap()));
            }
        }
        admitted.sort();
        let mut expected = vec![
            "ingress-nginx/ingress-nginx -> webhook",
            "monitoring/prometheus -> metrics",
        ];
        if kustomization == "overlays/sidecar" {
            expected.insert(0, "ingress-nginx/ingress-nginx -> http");
        }
        assert_eq!(admitted, expected, "{kustomization}");
    }
}

#[test]
fn the_prometheus_rule_carries_exactly_the_alert_rule_groups() {
    let rules = yaml(repo().join("alerts/nuki-exporter.rules.yml"));
    for kustomization in [
        "monitoring",
        "overlays/prometheus-operator",
        "overlays/sidecar",
    ] {
        let objects = render(kustomization);
        let rule = find(&objects, "PrometheusRule", "nuki-exporter");
        assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
        assert!(
            rule["spec"] == rules,
            "deploy/kubernetes/monitoring/prometheusrule.yaml has drifted from \
             alerts/nuki-exporter.rules.yml: run `{REGENERATE_RULES}` and commit the result"
        );
        let spec = rule["spec"].as_mapping().unwrap();
        assert_eq!(spec.len(), 1, "spec holds groups only");
    }
}

#[test]
fn promtool_accepts_the_rendered_prometheus_rule_groups() {
    let objects = render("monitoring");
    let rule = find(&objects, "PrometheusRule", "nuki-exporter");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("groups.yml");
    std::fs::write(&file, serde_yaml_ng::to_string(&rule["spec"]).unwrap()).unwrap();
    let report = run_ok(Command::new(promtool()).args(["check", "rules"]).arg(&file));
    assert!(report.contains("SUCCESS"), "{report}");
}

#[test]
fn the_generator_reproduces_the_committed_prometheus_rule() {
    let generated = run(Command::new(repo().join(REGENERATE_RULES)).arg("--stdout"));
    assert!(generated.ok);
    let committed = read(kubernetes_dir().join("monitoring/prometheusrule.yaml"));
    assert!(
        generated.stdout == committed,
        "deploy/kubernetes/monitoring/prometheusrule.yaml is not what `{REGENERATE_RULES}` writes: rerun it"
    );
}

#[test]
fn every_dashboard_is_a_configmap_for_the_grafana_sidecar() {
    let objects = render("monitoring");
    let mut shipped = Vec::new();
    for object in objects.iter().filter(|o| kind(o) == "ConfigMap") {
        assert_eq!(
            object["metadata"]["labels"]["grafana_dashboard"],
            "1",
            "{}",
            name(object)
        );
        let data = object["data"].as_mapping().expect("ConfigMap data");
        for (file, content) in data {
            let file = file.as_str().unwrap();
            let path = repo().join("dashboards").join(file);
            assert_eq!(
                content.as_str().unwrap(),
                read(&path),
                "ConfigMap {} differs from {}",
                name(object),
                path.display()
            );
            shipped.push(path);
        }
    }
    shipped.sort();
    assert_eq!(
        shipped,
        dashboard_files(),
        "every dashboards/*.json must be listed in dashboards/kustomization.yaml"
    );
}

/// The pod template of a rendered workload (`Deployment`, `StatefulSet`).
fn pod_spec<'a>(objects: &'a [Value], workload: &str, name: &str) -> &'a Value {
    &find(objects, workload, name)["spec"]["template"]["spec"]
}

fn container<'a>(pod: &'a Value, container: &str) -> &'a Value {
    pod["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == container)
        .unwrap_or_else(|| panic!("no container {container}"))
}

/// The exporter configuration a kustomization mounts, loaded as the exporter loads it.
fn mounted_config(objects: &[Value]) -> nuki_exporter::Config {
    let config_map = objects
        .iter()
        .find(|o| kind(o) == "ConfigMap" && name(o).starts_with("nuki-exporter-config-"))
        .expect("the configuration ConfigMap, with a hash suffix");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, config_map["data"]["config.toml"].as_str().unwrap()).unwrap();
    nuki_exporter::Config::load(Some(&file)).unwrap_or_else(|e| panic!("mounted config.toml: {e}"))
}

fn seconds(value: &Value) -> u64 {
    value.as_u64().expect("a number of seconds")
}

/// The shutdown sequence (ready 503, delay, webhook listener drains, delay, metrics listener
/// drains) ends before Kubernetes sends SIGKILL.
fn assert_shutdown_fits(config: &nuki_exporter::Config, pod: &Value) {
    let worst = 2 * (config.server.shutdown_delay + config.server.shutdown_grace_period);
    let grace = seconds(&pod["terminationGracePeriodSeconds"]);
    assert!(
        worst.as_secs() < grace,
        "terminationGracePeriodSeconds {grace} must exceed 2 x (shutdown_delay + shutdown_grace_period) = {worst:?}"
    );
    assert!(
        !config.server.shutdown_delay.is_zero(),
        "a shutdown_delay lets the endpoints drop the pod before the listener closes"
    );
}

fn assert_hardened(pod: &Value, exporter: &Value) {
    let effective = |key: &str| {
        let own = &exporter["securityContext"][key];
        if own.is_null() {
            pod["securityContext"][key].clone()
        } else {
            own.clone()
        }
    };
    assert_eq!(effective("runAsNonRoot"), Value::Bool(true));
    assert_eq!(effective("runAsUser"), Value::from(65532));
    assert_eq!(exporter["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        exporter["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        exporter["securityContext"]["capabilities"]["drop"][0],
        "ALL"
    );
    assert_eq!(exporter["livenessProbe"]["httpGet"]["path"], "/-/healthy");
    assert_eq!(exporter["readinessProbe"]["httpGet"]["path"], "/-/ready");
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                exporter["resources"][bound][resource].is_string(),
                "resources.{bound}.{resource}"
            );
        }
    }
    assert_eq!(
        exporter["image"].as_str().unwrap(),
        format!("nuki-exporter:{}", env!("CARGO_PKG_VERSION")),
        "the image tag follows the crate version"
    );
}

#[test]
fn the_base_runs_two_hardened_replicas_that_shut_down_in_time() {
    let objects = render("base");
    let statefulset = find(&objects, "StatefulSet", "nuki-exporter");
    assert_eq!(statefulset["spec"]["replicas"], 2);
    let pod = pod_spec(&objects, "StatefulSet", "nuki-exporter");
    let exporter = container(pod, "nuki-exporter");
    assert_hardened(pod, exporter);
    let config = mounted_config(&objects);
    assert_shutdown_fits(&config, pod);
    assert_eq!(
        config.webhook.secret_files,
        [PathBuf::from("/etc/nuki-exporter/secrets/webhook-secret")]
    );
    let secret_volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| !v["secret"].is_null())
        .expect("the webhook secret is a volume");
    assert_eq!(secret_volume["secret"]["secretName"], "nuki-exporter");
    let budget = find(&objects, "PodDisruptionBudget", "nuki-exporter");
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    // The Service is named nuki-exporter: Kubernetes' NUKI_EXPORTER_* variables must not stop
    // the exporter (tests/cli.rs starts it with them).
    find(&objects, "Service", "nuki-exporter");
}

#[test]
fn the_sidecar_relays_to_the_application_on_loopback_with_the_base_container() {
    let objects = render("overlays/sidecar");
    let pod = pod_spec(&objects, "Deployment", "webhook-app");
    let exporter = container(pod, "nuki-exporter");
    container(pod, "app");
    assert_hardened(pod, exporter);
    let base_objects = render("base");
    let base = container(
        pod_spec(&base_objects, "StatefulSet", "nuki-exporter"),
        "nuki-exporter",
    );
    for key in [
        "image",
        "args",
        "ports",
        "livenessProbe",
        "readinessProbe",
        "resources",
    ] {
        assert_eq!(
            exporter[key], base[key],
            "the sidecar's {key} differs from the base StatefulSet's"
        );
    }
    let config = mounted_config(&objects);
    assert_shutdown_fits(&config, pod);
    let upstream = config.forward.upstream().unwrap().expect("forward.url set");
    assert_eq!(upstream.host(), Some("127.0.0.1"));
    let app_port = container(pod, "app")["ports"][0]["containerPort"].as_u64();
    assert_eq!(upstream.port_u16().map(u64::from), app_port);
    // Webhooks enter the exporter's port.
    let service = find(&objects, "Service", "webhook-app");
    let webhook_port = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "webhook")
        .expect("a webhook port");
    assert_eq!(webhook_port["targetPort"], "webhook");
}

#[test]
fn the_service_monitor_scrapes_every_replica_as_job_nuki_exporter() {
    for kustomization in ["overlays/prometheus-operator", "overlays/sidecar"] {
        let objects = render(kustomization);
        let monitor = find(&objects, "ServiceMonitor", "nuki-exporter");
        let selector = monitor["spec"]["selector"]["matchLabels"]
            .as_mapping()
            .unwrap();
        let endpoint = &monitor["spec"]["endpoints"][0];
        let port = endpoint["port"].as_str().unwrap();
        let selected: Vec<&Value> = objects
            .iter()
            .filter(|o| kind(o) == "Service")
            .filter(|s| {
                selector
                    .iter()
                    .all(|(k, v)| &s["metadata"]["labels"][k.as_str().unwrap()] == v)
            })
            .collect();
        assert_eq!(selected.len(), 1, "{kustomization}: one Service selected");
        let ports = selected[0]["spec"]["ports"].as_sequence().unwrap();
        let metrics = ports
            .iter()
            .find(|p| p["name"] == port)
            .unwrap_or_else(|| panic!("{kustomization}: no Service port {port}"));
        assert_eq!(metrics["port"], 10181);
        assert_eq!(endpoint["relabelings"][0]["targetLabel"], "job");
        assert_eq!(
            endpoint["relabelings"][0]["replacement"],
            ALERT_JOB_MATCHER.2
        );
        // A stable instance: the pod name, which a StatefulSet's replica keeps.
        let instance = endpoint["relabelings"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|r| r["targetLabel"] == "instance")
            .unwrap_or_else(|| panic!("{kustomization}: instance is not relabelled"));
        assert_eq!(instance["sourceLabels"][0], "__meta_kubernetes_pod_name");
        assert_eq!(instance["action"], "replace");
    }
}

/// The state file of each replica is on its own volume claim, mounted where state.file is.
#[test]
fn each_replica_keeps_its_state_file_on_a_claim_of_its_own_and_a_stable_name() {
    let objects = render("base");
    let statefulset = find(&objects, "StatefulSet", "nuki-exporter");
    let claims = statefulset["spec"]["volumeClaimTemplates"]
        .as_sequence()
        .expect("volumeClaimTemplates");
    assert_eq!(claims.len(), 1);
    let claim = &claims[0];
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteOnce");
    assert!(claim["spec"]["resources"]["requests"]["storage"].is_string());
    let claim_name = name(claim);
    let pod = pod_spec(&objects, "StatefulSet", "nuki-exporter");
    assert!(
        !pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|v| v["name"] == claim_name),
        "a pod volume named {claim_name} would shadow the claim"
    );
    let mount = container(pod, "nuki-exporter")["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == claim_name)
        .expect("the claim is mounted");
    let config = mounted_config(&objects);
    let state_file = config.state.file.expect("state.file is set");
    assert_eq!(
        state_file.parent().unwrap(),
        PathBuf::from(mount["mountPath"].as_str().unwrap()),
        "state.file is on the claim"
    );
    assert_eq!(
        statefulset["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"],
        "Retain"
    );
    // The Service the StatefulSet names exists.
    find(
        &objects,
        "Service",
        statefulset["spec"]["serviceName"].as_str().unwrap(),
    );
}

/// The bridges' Leases: the pod's name and namespace reach [bridge_lease] through the downward
/// API, and its service account may get, create and patch Leases in its namespace, nothing else.
#[test]
fn the_replicas_may_only_read_create_and_renew_leases_as_their_pod_name() {
    let objects = render("base");
    let pod = pod_spec(&objects, "StatefulSet", "nuki-exporter");
    let env = container(pod, "nuki-exporter")["env"]
        .as_sequence()
        .expect("env");
    for (variable, field) in [
        ("NUKI_EXPORTER_BRIDGE_LEASE__IDENTITY", "metadata.name"),
        (
            "NUKI_EXPORTER_BRIDGE_LEASE__NAMESPACE",
            "metadata.namespace",
        ),
    ] {
        let entry = env
            .iter()
            .find(|e| e["name"] == variable)
            .unwrap_or_else(|| panic!("no {variable}"));
        assert_eq!(entry["valueFrom"]["fieldRef"]["fieldPath"], field);
    }
    let account = pod["serviceAccountName"]
        .as_str()
        .expect("a service account");
    find(&objects, "ServiceAccount", account);
    assert_eq!(pod["automountServiceAccountToken"], true);

    let bindings: Vec<&Value> = objects
        .iter()
        .filter(|o| kind(o) == "RoleBinding" || kind(o) == "ClusterRoleBinding")
        .filter(|b| {
            b["subjects"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|s| s["kind"] == "ServiceAccount" && s["name"] == account)
        })
        .collect();
    assert_eq!(bindings.len(), 1, "one binding of {account}");
    assert_eq!(
        kind(bindings[0]),
        "RoleBinding",
        "namespaced, never cluster-wide"
    );
    assert_eq!(bindings[0]["roleRef"]["kind"], "Role");
    let role = find(
        &objects,
        "Role",
        bindings[0]["roleRef"]["name"].as_str().unwrap(),
    );
    let rules = role["rules"].as_sequence().unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    let strings = |value: &Value| -> Vec<String> {
        let mut items: Vec<String> = value
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        items.sort();
        items
    };
    assert_eq!(strings(&rules[0]["apiGroups"]), ["coordination.k8s.io"]);
    assert_eq!(strings(&rules[0]["resources"]), ["leases"]);
    assert_eq!(strings(&rules[0]["verbs"]), ["create", "get", "patch"]);
    assert!(!objects.iter().any(|o| kind(o) == "ClusterRole"));
}
