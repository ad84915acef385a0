//! The Helm chart starts this binary with flags and environment variables it really has: every
//! container of `helm template charts/hostplane` is run as `hostplane ARGS --help`, which clap
//! refuses (exit 2) when a flag is unknown or its value does not parse.

use std::path::Path;
use std::process::Command;

use hostplane_tests::{Binaries, run_command};
use serde_json::Value;

fn rendered_containers(values: &[&str]) -> Vec<(String, Value)> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/hostplane");
    let home = tempfile::tempdir().expect("helm home");
    let mut helm = Command::new(&Binaries::get().helm);
    helm.env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .arg("template")
        .arg("hp")
        .arg(&chart)
        .args(values);
    let yaml = run_command(helm, None).expect_success("helm template");
    let mut containers = Vec::new();
    for document in yaml.split("\n---\n") {
        let Ok(value) = serde_yaml::from_str::<Value>(document) else {
            panic!("helm printed invalid YAML:\n{document}");
        };
        if value["kind"] != "Deployment" {
            continue;
        }
        let name = value["metadata"]["name"].as_str().unwrap_or_default();
        for container in value["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers")
        {
            containers.push((name.to_owned(), container.clone()));
        }
    }
    containers
}

#[test]
fn the_chart_passes_only_flags_and_variables_the_binary_has() {
    let variants: [&[&str]; 6] = [
        &[],
        &[
            "--set",
            "controller.proxyAddress=tenants.example.com:443",
            "--set",
            "controller.postgres.dsnSecret.name=pg-admin",
            "--set",
            "proxy.download.tlsSecret=proxy-download-tls",
        ],
        &[
            "--set",
            "controller.leaderElection.enabled=false",
            "--set",
            "proxy.download.enabled=false",
        ],
        // The pods runtime: its image, namespace and pod-label flags.
        &["--set", "controller.runtime=pods"],
        &[
            "--set",
            "controller.runtime=pods",
            "--set",
            "controller.pods.images.kubeApiserver=registry.example.com/k8s/kube-apiserver",
            "--set",
            "controller.pods.images.kine=registry.example.com/kine:v0.17.5",
            "--set",
            "controller.postgres.dsnSecret.name=pg-admin",
        ],
        // The pods runtime's proxy Deployment with its download certificate and address.
        &[
            "--set",
            "controller.runtime=pods",
            "--set",
            "controller.proxyAddress=tenants.example.com:443",
            "--set",
            "proxy.download.tlsSecret=proxy-download-tls",
        ],
    ];
    let mut checked = 0;
    for values in variants {
        for (deployment, container) in rendered_containers(values) {
            let args: Vec<String> =
                serde_json::from_value(container["args"].clone()).expect("container args");
            let subcommand = args.first().cloned().unwrap_or_default();
            let mut command = Command::new(env!("CARGO_BIN_EXE_hostplane"));
            command.args(&args).arg("--help");
            let out = run_command(command, None);
            assert!(
                out.success(),
                "{deployment}: `hostplane {}` is refused:\n{}",
                args.join(" "),
                out.combined()
            );
            // Environment variables the chart sets are ones the subcommand reads.
            for variable in container["env"].as_array().into_iter().flatten() {
                let name = variable["name"].as_str().unwrap_or_default();
                assert!(
                    out.stdout.contains(&format!("env: {name}")),
                    "{deployment}: `hostplane {subcommand}` does not read {name}:\n{}",
                    out.stdout
                );
            }
            checked += 1;
        }
    }
    // The proxy is a container of the controller's Deployment (processes) or of its own (pods).
    assert_eq!(
        checked, 12,
        "expected the controller and the proxy, six times"
    );
}

/// The flags of the pods runtime reach the controller, and the chart's default tenant images are
/// the binary's own defaults (so the chart does not pin older images than the binary would).
#[test]
fn the_chart_runs_the_pods_runtime_with_the_binarys_default_images() {
    let containers = rendered_containers(&["--set", "controller.runtime=pods"]);
    let (_, controller) = containers
        .iter()
        .find(|(_, c)| c["name"] == "controller")
        .expect("controller container");
    let args: Vec<String> =
        serde_json::from_value(controller["args"].clone()).expect("container args");
    assert!(args.contains(&"--runtime=pods".to_owned()), "{args:?}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_hostplane"));
    command.args(["controller", "--help"]);
    let help = run_command(command, None).expect_success("hostplane controller --help");
    for flag in [
        "--kube-apiserver-image",
        "--kube-controller-manager-image",
        "--kube-scheduler-image",
        "--kine-image",
        "--etcd-image",
        "--etcd-storage-size",
    ] {
        let value = args
            .iter()
            .find_map(|a| a.strip_prefix(&format!("{flag}=")))
            .unwrap_or_else(|| panic!("{flag} missing from {args:?}"));
        assert!(
            help.contains(&format!("[default: {value}]")),
            "the chart's {flag}={value} is not the binary's default:\n{help}"
        );
    }
    for flag in ["--hostplane-namespace=", "--hostplane-pod-labels="] {
        assert!(
            args.iter().any(|a| a.starts_with(flag)),
            "{flag} missing from {args:?}"
        );
    }
}
