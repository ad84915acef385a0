//! The Helm chart `charts/hostplane`: it lints clean, renders locked-down pods and least-privilege
//! RBAC, installs into a real kube-apiserver (on etcd) where the controller's ServiceAccount (and,
//! with the pods runtime, the proxy's) may do exactly what the controller (the proxy) does, and
//! uninstalls without leaving its objects behind.
//!
//! The apiserver has no kubelet, so pods never run: the test checks the objects helm created and
//! what RBAC lets their identities do, as `kubectl auth can-i` answers it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use hostplane_tests::{
    Binaries, CommandOutput, KubeApiserver, run_command, start_apiserver_on_etcd,
};
use serde_json::{Value, json};
use tempfile::TempDir;

const RELEASE: &str = "hp";
const NAMESPACE: &str = "hostplane-system";
const CONTROLLER_SA: &str = "hp-hostplane-controller";
const PROXY_SERVICE: &str = "hp-hostplane-proxy";
/// With the pods runtime the proxy's Deployment, ServiceAccount, ClusterRole(Binding) and
/// PodDisruptionBudget, all named like its Service.
const PROXY: &str = "hp-hostplane-proxy";
const PROXY_METRICS_SERVICE: &str = "hp-hostplane-proxy-metrics";
const LEADER_ELECTION: &str = "hp-hostplane-controller-leader-election";
/// The controller's Lease: its name is the controller's.
const LEASE: &str = "leases.coordination.k8s.io/hp-hostplane-controller";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn chart() -> String {
    repo("charts/hostplane").display().to_string()
}

/// helm with its cache, config and data kept in `home`, never in the user's, and no ambient
/// kubeconfig.
fn helm(home: &TempDir, args: &[&str]) -> CommandOutput {
    let mut command = Command::new(&Binaries::get().helm);
    command
        .env_remove("KUBECONFIG")
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .args(args);
    run_command(command, None)
}

fn helm_home() -> TempDir {
    tempfile::Builder::new()
        .prefix("hostplane-helm-")
        .tempdir()
        .expect("creating helm's home")
}

/// `helm template` of the chart with `--set` values, as parsed documents.
fn render(home: &TempDir, extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", RELEASE, &chart, "--namespace", NAMESPACE];
    args.extend_from_slice(extra);
    let yaml = helm(home, &args).expect_success("helm template");
    split_documents(&yaml)
}

/// The documents of a multi-document YAML stream, skipping empty ones.
fn split_documents(yaml: &str) -> Vec<Value> {
    let mut documents = vec![String::new()];
    for line in yaml.lines() {
        if line == "---" {
            documents.push(String::new());
        } else if let Some(current) = documents.last_mut() {
            current.push_str(line);
            current.push('\n');
        }
    }
    documents
        .iter()
        .filter_map(|text| {
            let value: Value = serde_yaml::from_str(text)
                .unwrap_or_else(|e| panic!("helm printed invalid YAML ({e}):\n{text}"));
            (!value.is_null()).then_some(value)
        })
        .collect()
}

fn kinds_and_names(documents: &[Value]) -> BTreeSet<(String, String)> {
    documents
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_owned(),
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

fn find<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} not rendered"))
}

/// The chart's version, as its `helm.sh/chart` label carries it.
fn chart_version() -> String {
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo("charts/hostplane/Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml is YAML");
    chart["version"]
        .as_str()
        .expect("Chart.yaml version")
        .to_owned()
}

/// The selector labels of one of the release's components.
fn selector_labels(component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "hostplane",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": component,
    })
}

/// The labels of the release's objects and pods of one component.
fn component_labels(component: &str) -> Value {
    json!({
        "helm.sh/chart": format!("hostplane-{}", chart_version()),
        "app.kubernetes.io/name": "hostplane",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/version": "0.1.0",
        "app.kubernetes.io/managed-by": "Helm",
        "app.kubernetes.io/part-of": "hostplane",
        "app.kubernetes.io/component": component,
    })
}

fn set(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| ["--set".to_owned(), format!("{k}={v}")])
        .collect()
}

#[test]
fn chart_lints_clean_and_refuses_unsafe_values() {
    let home = helm_home();
    let chart = chart();
    for values in [
        set(&[]),
        set(&[
            ("controller.postgres.dsnSecret.name", "hostplane-postgres"),
            ("controller.proxyAddress", "tenants.example.com:443"),
            ("serviceMonitor.enabled", "true"),
            ("proxy.service.type", "LoadBalancer"),
        ]),
        set(&[
            ("controller.replicas", "3"),
            ("proxy.download.tlsSecret", "proxy-download-tls"),
        ]),
        set(&[
            ("proxy.enabled", "false"),
            ("builtinHooks.kubevirtNodes", "false"),
            ("controller.leaderElection.enabled", "false"),
        ]),
        set(&[
            ("controller.runtime", "pods"),
            ("controller.postgres.dsnSecret.name", "hostplane-postgres"),
            ("controller.replicas", "2"),
        ]),
        // The proxy Deployment of the pods runtime, in its variants.
        set(&[
            ("controller.runtime", "pods"),
            ("proxy.replicas", "3"),
            ("proxy.podAntiAffinity", "hard"),
            ("proxy.podDisruptionBudget.maxUnavailable", "50%"),
            ("proxy.download.tlsSecret", "proxy-download-tls"),
            ("proxy.serviceAccount.annotations.team", "edge"),
            ("proxy.podAnnotations.team", "edge"),
            ("controller.proxyAddress", "tenants.example.com:443"),
            ("serviceMonitor.enabled", "true"),
            ("serviceMonitor.force", "true"),
        ]),
        set(&[
            ("controller.runtime", "pods"),
            ("proxy.podAntiAffinity", ""),
            ("proxy.podDisruptionBudget.enabled", "false"),
            ("proxy.download.enabled", "false"),
        ]),
        set(&[("controller.runtime", "pods"), ("proxy.enabled", "false")]),
    ] {
        let mut args = vec!["lint", "--strict", &chart];
        args.extend(values.iter().map(String::as_str));
        let out = helm(&home, &args);
        assert!(
            out.success(),
            "helm lint --strict {values:?} failed:\n{}",
            out.combined()
        );
        assert!(
            out.stdout.contains("0 chart(s) failed"),
            "{}",
            out.combined()
        );
    }

    // Two controllers running tenants as child processes would start every tenant twice.
    let out = helm(
        &home,
        &[
            "template",
            RELEASE,
            &chart,
            "--set",
            "controller.replicas=2",
            "--set",
            "controller.leaderElection.enabled=false",
        ],
    );
    assert!(!out.success(), "two unelected controllers rendered");
    assert!(
        out.stderr
            .contains("needs controller.leaderElection.enabled=true"),
        "{}",
        out.stderr
    );
    // The schema catches misspelt values instead of ignoring them.
    let out = helm(
        &home,
        &["template", RELEASE, &chart, "--set", "controller.replica=2"],
    );
    assert!(!out.success(), "a misspelt value was accepted");
    assert!(out.stderr.contains("replica"), "{}", out.stderr);
    let out = helm(
        &home,
        &[
            "template",
            RELEASE,
            &chart,
            "--set",
            "controller.tokens.renewFraction=1.5",
        ],
    );
    assert!(
        !out.success(),
        "a token renew fraction above 1 was accepted"
    );
    // Only the runtimes the controller implements.
    let out = helm(
        &home,
        &[
            "template",
            RELEASE,
            &chart,
            "--set",
            "controller.runtime=vms",
        ],
    );
    assert!(!out.success(), "an unknown runtime was accepted");
    assert!(out.stderr.contains("runtime"), "{}", out.stderr);
    let out = helm(
        &home,
        &[
            "template",
            RELEASE,
            &chart,
            "--set",
            "controller.runtime=pods",
            "--set",
            "proxy.podAntiAffinity=always",
        ],
    );
    assert!(!out.success(), "an unknown anti-affinity was accepted");
    assert!(out.stderr.contains("podAntiAffinity"), "{}", out.stderr);
    // `--set` passes decimals as strings; a valid one still reaches the flag.
    let controller = render(&home, &["--set", "controller.tokens.renewFraction=0.9"]);
    let args = args_of(rendered_container(&controller, "controller"));
    assert!(
        args.contains(&"--token-renew-fraction=0.9".to_owned()),
        "{args:?}"
    );
}

/// The pod and container security settings of the `restricted` Pod Security Standard, plus a
/// read-only root filesystem.
fn assert_locked_down(deployment: &Value) {
    let name = &deployment["metadata"]["name"];
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
        "{name}"
    );
    assert_eq!(pod["hostNetwork"], Value::Null, "{name}");
    let containers = pod["containers"].as_array().expect("containers");
    assert!(!containers.is_empty(), "{name}");
    for container in containers {
        let name = format!("{name}/{}", container["name"]);
        let security = &container["securityContext"];
        assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(security["runAsNonRoot"], true, "{name}");
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{name}");
        assert_eq!(security["capabilities"].get("add"), None, "{name}");
        assert_eq!(
            security["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        assert_eq!(security.get("privileged"), None, "{name}");
    }
}

/// The container `name` of a Deployment.
fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {}", deployment["metadata"]["name"]))
}

/// The container `name` of the one Deployment among `documents`.
fn rendered_container<'a>(documents: &'a [Value], name: &str) -> &'a Value {
    container(find(documents, "Deployment", CONTROLLER_SA), name)
}

/// The proxy container with default values, whole: the sidecar of the controller pod (processes
/// runtime) and the only container of the proxy pods (pods runtime) are the same.
fn expected_proxy_container() -> Value {
    json!({
        "name": "proxy",
        "image": "ghcr.io/hostplane/hostplane:0.1.0",
        "imagePullPolicy": "IfNotPresent",
        "args": [
            "proxy",
            "--log=info",
            "--listen=0.0.0.0:9443",
            "--tenant-domain=tenants.hostplane.local",
            "--hello-timeout-ms=5000",
            "--activity-interval-seconds=30",
            "--wake-timeout-seconds=30",
            "--metrics-listen=0.0.0.0:9465",
            "--download-listen=0.0.0.0:9444",
            "--download-ca-file=/tmp/download-ca.crt",
        ],
        "ports": [
            {"name": "tenants", "containerPort": 9443, "protocol": "TCP"},
            {"name": "download", "containerPort": 9444, "protocol": "TCP"},
            {"name": "proxy-metrics", "containerPort": 9465, "protocol": "TCP"},
        ],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "proxy-metrics"},
            "periodSeconds": 20,
            "timeoutSeconds": 5,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "proxy-metrics"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
        },
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        // The generated download certificate's CA goes to /tmp: the root filesystem is read-only.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    })
}

/// The flags a container starts `hostplane SUBCOMMAND` with.
fn args_of(container: &Value) -> Vec<String> {
    serde_json::from_value(container["args"].clone()).expect("container args")
}

#[test]
fn chart_renders_locked_down_workloads_and_the_builtin_hook() {
    let home = helm_home();
    let documents = render(&home, &[]);
    let expected: BTreeSet<(String, String)> = [
        ("ServiceAccount", CONTROLLER_SA),
        ("ClusterRole", CONTROLLER_SA),
        ("ClusterRoleBinding", CONTROLLER_SA),
        ("Role", LEADER_ELECTION),
        ("RoleBinding", LEADER_ELECTION),
        ("Service", "hp-hostplane-metrics"),
        ("Service", PROXY_SERVICE),
        ("Deployment", CONTROLLER_SA),
        ("PostCreateHook", "kubevirt-nodes"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    assert_eq!(kinds_and_names(&documents), expected);
    for document in &documents {
        let namespaced = !matches!(
            document["kind"].as_str(),
            Some("ClusterRole" | "ClusterRoleBinding" | "PostCreateHook")
        );
        if namespaced {
            assert_eq!(document["metadata"]["namespace"], NAMESPACE, "{document}");
        }
        assert_eq!(
            document["metadata"]["labels"]["app.kubernetes.io/instance"], RELEASE,
            "{document}"
        );
    }

    // One pod: tenants of the processes runtime listen on the controller pod's loopback, so the
    // proxy runs beside the controller, as a second container.
    let deployment = find(&documents, "Deployment", CONTROLLER_SA);
    assert_locked_down(deployment);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], CONTROLLER_SA);
    let names: Vec<&str> = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["controller", "proxy"]);
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");

    // Probes hit the controller's metrics server, on the port it is told to serve.
    let controller = container(deployment, "controller");
    assert_eq!(controller["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(controller["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(controller["ports"][0]["containerPort"], 9464);
    let controller_args = args_of(controller);
    assert_eq!(controller_args[0], "controller");
    for flag in [
        "--metrics-addr=0.0.0.0:9464",
        "--state-dir=/var/lib/hostplane/state",
        "--token-renew-fraction=0.8",
        "--tenant-domain=tenants.hostplane.local",
        "--leader-elect",
        "--leader-election-namespace=hostplane-system",
        "--leader-election-id=hp-hostplane-controller",
        "--node-drain-timeout-seconds=300",
    ] {
        assert!(
            controller_args.iter().any(|a| a == flag),
            "{flag} missing from {controller_args:?}"
        );
    }
    // That the hostplane binary accepts these flags is checked by cli/tests/chart_args.rs.
    // The root filesystem is read-only, so the controller's writable paths are volumes.
    let mounts: Vec<&str> = controller["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert_eq!(mounts, ["/var/lib/hostplane/state", "/tmp"]);
    // No DSN unless a Secret is named; then only as a secretKeyRef, never a literal.
    assert_eq!(controller.get("env"), None);
    let with_postgres = render(
        &home,
        &["--set", "controller.postgres.dsnSecret.name=pg-admin"],
    );
    let env = &rendered_container(&with_postgres, "controller")["env"];
    assert_eq!(
        env,
        &json!([{
            "name": "HOSTPLANE_POSTGRES_DSN",
            "valueFrom": {"secretKeyRef": {"name": "pg-admin", "key": "dsn"}}
        }])
    );

    // The proxy sidecar, whole: it listens on all interfaces in the pod; its Service forwards 443
    // there, and the download port beside it. Its probes use its own metrics server.
    let proxy_container = rendered_container(&documents, "proxy");
    assert_eq!(proxy_container, &expected_proxy_container());
    // The pod's volumes: the state, and /tmp shared by both containers.
    assert_eq!(
        pod["volumes"],
        json!([
            {"name": "state", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
        ])
    );
    let with_tls = render(
        &home,
        &["--set", "proxy.download.tlsSecret=proxy-download-tls"],
    );
    let with_tls = find(&with_tls, "Deployment", CONTROLLER_SA);
    assert_eq!(
        with_tls["spec"]["template"]["spec"]["volumes"][2],
        json!({"name": "download-tls", "secret": {"secretName": "proxy-download-tls"}})
    );
    // The proxy Service reaches the proxy in the controller pods; only the elected leader, which
    // runs the tenants, is Ready and so behind it.
    let proxy_service = find(&documents, "Service", PROXY_SERVICE);
    assert_eq!(
        proxy_service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        proxy_service["spec"]["ports"],
        json!([
            {"name": "tenants", "port": 443, "targetPort": "tenants", "protocol": "TCP"},
            {"name": "download", "port": 9444, "targetPort": "download", "protocol": "TCP"},
        ])
    );
    // Metrics stay cluster-internal even when the proxy Service is a LoadBalancer.
    let metrics_service = find(&documents, "Service", "hp-hostplane-metrics");
    assert_eq!(metrics_service["spec"]["type"], "ClusterIP");
    assert_eq!(
        metrics_service["spec"]["ports"],
        json!([
            {"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"},
            {"name": "proxy-metrics", "port": 9465, "targetPort": "proxy-metrics", "protocol": "TCP"},
        ])
    );

    // No rule anywhere grants a wildcard.
    for role in documents
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        for rule in role["rules"].as_array().expect("rules") {
            for field in ["apiGroups", "resources", "verbs"] {
                assert!(
                    !rule[field].as_array().unwrap().contains(&json!("*")),
                    "wildcard in {}: {rule}",
                    role["metadata"]["name"]
                );
            }
        }
    }

    // Without downloads, nothing may authenticate or authorize callers; without the proxy, no
    // proxy container or Service.
    let rules_without_downloads = render(&home, &["--set", "proxy.download.enabled=false"]);
    let rules = &find(&rules_without_downloads, "ClusterRole", CONTROLLER_SA)["rules"];
    for review in ["tokenreviews", "subjectaccessreviews"] {
        assert!(
            !rules.to_string().contains(review),
            "{review} granted without downloads: {rules}"
        );
    }
    let without_proxy = render(&home, &["--set", "proxy.enabled=false"]);
    let deployment = find(&without_proxy, "Deployment", CONTROLLER_SA);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert!(
        !kinds_and_names(&without_proxy)
            .contains(&("Service".to_owned(), PROXY_SERVICE.to_owned()))
    );

    // The PostCreateHook is the built-in one, field for field.
    let builtin: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo("hooks/builtin/kubevirt-nodes.yaml")).unwrap(),
    )
    .unwrap();
    let hook = find(&documents, "PostCreateHook", "kubevirt-nodes");
    assert_eq!(hook["apiVersion"], builtin["apiVersion"]);
    assert_eq!(hook["spec"], builtin["spec"]);
    assert_eq!(
        hook["spec"]["templates"][0]["metadata"]["name"],
        "{{.ControlPlaneName}}-node-{{.NodeIndex}}"
    );

    // The ServiceMonitor only when asked for and the API exists (or it is forced).
    let monitors = |extra: &[&str]| {
        let mut args = vec!["--set", "serviceMonitor.enabled=true"];
        args.extend_from_slice(extra);
        render(&home, &args)
            .into_iter()
            .filter(|d| d["kind"] == "ServiceMonitor")
            .count()
    };
    assert_eq!(monitors(&[]), 0);
    assert_eq!(
        monitors(&["--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"]),
        1
    );
    assert_eq!(monitors(&["--set", "serviceMonitor.force=true"]), 1);
}

/// The ClusterRole rules the pods runtime adds, as (apiGroup, resource, verbs).
const PODS_RUNTIME_RULES: [(&str, &str, &[&str]); 8] = [
    (
        "apps",
        "deployments",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    (
        "apps",
        "statefulsets",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    ("", "services", &["create", "patch", "delete"]),
    ("", "resourcequotas", &["create", "patch", "delete"]),
    ("", "limitranges", &["create", "patch", "delete"]),
    (
        "networking.k8s.io",
        "networkpolicies",
        &["create", "patch", "delete"],
    ),
    ("", "secrets", &["delete"]),
    // Usage metering reads tenants' pod metrics where metrics-server serves them.
    ("metrics.k8s.io", "pods", &["list"]),
];

/// The verbs a ClusterRole's rules grant on one resource, over all rules naming it.
fn granted(role: &Value, group: &str, resource: &str) -> BTreeSet<String> {
    role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|rule| {
            rule["apiGroups"]
                .as_array()
                .unwrap()
                .contains(&json!(group))
                && rule["resources"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(resource))
        })
        .flat_map(|rule| rule["verbs"].as_array().unwrap().clone())
        .map(|verb| verb.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn chart_renders_the_pods_runtime_with_its_flags_and_rules() {
    let home = helm_home();
    let processes = render(&home, &[]);
    let pods = render(
        &home,
        &[
            "--set",
            "controller.runtime=pods",
            "--set",
            "controller.pods.images.kubeApiserver=registry.example.com/kube-apiserver",
            "--set",
            "controller.pods.images.kubeControllerManager=registry.example.com/kcm",
            "--set",
            "controller.pods.images.kubeScheduler=registry.example.com/sched",
            "--set",
            "controller.pods.images.kine=registry.example.com/kine:v9",
        ],
    );
    // The same objects plus the proxy's own (tenants' pods are the controller's doing, not the
    // chart's).
    let proxy_objects: BTreeSet<(String, String)> = [
        ("Deployment", PROXY),
        ("ServiceAccount", PROXY),
        ("ClusterRole", PROXY),
        ("ClusterRoleBinding", PROXY),
        ("PodDisruptionBudget", PROXY),
        ("Service", PROXY_METRICS_SERVICE),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    assert_eq!(
        kinds_and_names(&pods),
        &kinds_and_names(&processes) | &proxy_objects
    );

    let args = args_of(rendered_container(&pods, "controller"));
    let deployment = find(&pods, "Deployment", CONTROLLER_SA);
    let proxy = find(&pods, "Deployment", PROXY);
    // Tenants' NetworkPolicies admit the pods with these labels from the release namespace: the
    // labels the controller pods and the proxy pods share, without the component that keeps the
    // two Deployments' selectors apart.
    let pod_labels =
        "--hostplane-pod-labels=app.kubernetes.io/instance=hp,app.kubernetes.io/name=hostplane";
    for workload in [deployment, proxy] {
        let template_labels = &workload["spec"]["template"]["metadata"]["labels"];
        assert_eq!(template_labels["app.kubernetes.io/instance"], RELEASE);
        assert_eq!(template_labels["app.kubernetes.io/name"], "hostplane");
    }
    // Neither Deployment selects the other's pods.
    for (workload, other) in [(deployment, proxy), (proxy, deployment)] {
        let selector = workload["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("selector");
        let other_labels = &other["spec"]["template"]["metadata"]["labels"];
        assert!(
            selector.iter().any(|(k, v)| &other_labels[k] != v),
            "{} selects the pods of {}",
            workload["metadata"]["name"],
            other["metadata"]["name"]
        );
    }
    for flag in [
        "--runtime=pods",
        "--kube-apiserver-image=registry.example.com/kube-apiserver",
        "--kube-controller-manager-image=registry.example.com/kcm",
        "--kube-scheduler-image=registry.example.com/sched",
        "--kine-image=registry.example.com/kine:v9",
        "--hostplane-namespace=hostplane-system",
        pod_labels,
    ] {
        assert!(
            args.iter().any(|a| a == flag),
            "{flag} missing from {args:?}"
        );
    }
    // The proxy is not beside the controller any more: one container, no proxy volume.
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["containers"].as_array().map(Vec::len), Some(1));
    assert_eq!(pod["containers"][0]["name"], "controller");
    assert_eq!(
        pod["volumes"],
        json!([
            {"name": "state", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
        ])
    );
    assert_locked_down(deployment);
    assert_locked_down(proxy);

    // Processes: the default runtime, none of the pods flags.
    let args = args_of(rendered_container(&processes, "controller"));
    assert!(args.contains(&"--runtime=processes".to_owned()), "{args:?}");
    for flag in [
        "--kube-apiserver-image",
        "--kine-image",
        "--hostplane-namespace",
        "--hostplane-pod-labels",
    ] {
        assert!(
            !args.iter().any(|a| a.starts_with(flag)),
            "{flag} rendered for the processes runtime: {args:?}"
        );
    }

    // The pods runtime's rules, exactly; none of them with processes.
    let pods_role = find(&pods, "ClusterRole", CONTROLLER_SA);
    let processes_role = find(&processes, "ClusterRole", CONTROLLER_SA);
    for (group, resource, verbs) in PODS_RUNTIME_RULES {
        let with_pods = granted(pods_role, group, resource);
        let with_processes = granted(processes_role, group, resource);
        let added: BTreeSet<String> = with_pods.difference(&with_processes).cloned().collect();
        let expected: BTreeSet<String> = verbs.iter().map(|v| v.to_string()).collect();
        assert_eq!(added, expected, "{group}/{resource}");
    }
    for (group, resource) in [
        ("", "pods"),
        ("", "configmaps"),
        ("apps", "replicasets"),
        ("apps", "deployments/scale"),
        ("apps", "statefulsets/scale"),
        ("", "persistentvolumeclaims"),
    ] {
        assert!(
            granted(pods_role, group, resource).is_empty(),
            "{group}/{resource} granted with the pods runtime"
        );
    }
    // The controller reviews no tokens: without the proxy container it needs neither review.
    for (group, resource) in [
        ("authentication.k8s.io", "tokenreviews"),
        ("authorization.k8s.io", "subjectaccessreviews"),
    ] {
        assert_eq!(
            granted(processes_role, group, resource),
            BTreeSet::from(["create".to_owned()]),
            "{group}/{resource} with the proxy container"
        );
        assert!(
            granted(pods_role, group, resource).is_empty(),
            "{group}/{resource} granted to the controller with the pods runtime"
        );
    }
    // Six rules of the pods runtime in, the two review rules of the proxy container out.
    let pods_rules = pods_role["rules"].as_array().unwrap().len();
    let processes_rules = processes_role["rules"].as_array().unwrap().len();
    assert_eq!(pods_rules, processes_rules + 6 - 2, "{pods_role}");
    assert_eq!(processes_rules, 11, "{processes_role}");
}

/// The proxy's ClusterRole with kubeconfig downloads, whole (charts/hostplane/README.md, "The
/// proxy's ServiceAccount").
fn expected_proxy_rules() -> Value {
    json!([
        // The route table (list, watch), the activity and wake annotations (patch), the
        // ControlPlane a download asks for (get).
        {
            "apiGroups": ["tenancy.hostplane.io"],
            "resources": ["controlplanes"],
            "verbs": ["get", "list", "watch", "patch"],
        },
        // A download authenticates the caller and asks host RBAC about them.
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["tokenreviews"],
            "verbs": ["create"],
        },
        {
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["subjectaccessreviews"],
            "verbs": ["create"],
        },
        // And mints the caller's tenant token with the tenant's minter token (never with the
        // tenant's certificates and keys).
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["kubeconfig-minter"],
            "verbs": ["get"],
        },
    ])
}

#[test]
fn chart_runs_the_proxy_as_its_own_deployment_with_the_pods_runtime() {
    let home = helm_home();
    let pods = render(&home, &["--set", "controller.runtime=pods"]);

    // The proxy Deployment, whole: scaled on its own, rolled without losing a Ready pod, spread
    // over nodes, with its own ServiceAccount and the same container as the sidecar of the
    // processes runtime.
    assert_eq!(
        find(&pods, "Deployment", PROXY),
        &json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": PROXY,
                "namespace": NAMESPACE,
                "labels": component_labels("proxy"),
            },
            "spec": {
                "replicas": 2,
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
                },
                "selector": {"matchLabels": selector_labels("proxy")},
                "template": {
                    "metadata": {"labels": component_labels("proxy")},
                    "spec": {
                        "serviceAccountName": PROXY,
                        "securityContext": {
                            "runAsNonRoot": true,
                            "runAsUser": 65532,
                            "runAsGroup": 65532,
                            "fsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "affinity": {"podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [{
                                "weight": 100,
                                "podAffinityTerm": {
                                    "topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": {"matchLabels": selector_labels("proxy")},
                                },
                            }],
                        }},
                        "containers": [expected_proxy_container()],
                        "volumes": [{"name": "tmp", "emptyDir": {}}],
                    },
                },
            },
        })
    );
    assert_eq!(
        find(&pods, "PodDisruptionBudget", PROXY),
        &json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {
                "name": PROXY,
                "namespace": NAMESPACE,
                "labels": component_labels("proxy"),
            },
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": selector_labels("proxy")},
            },
        })
    );
    // Its Services select its pods: the public one for tenants and downloads, and a ClusterIP
    // one for metrics. The controller's metrics Service keeps only the controller's port.
    let proxy_service = find(&pods, "Service", PROXY_SERVICE);
    assert_eq!(proxy_service["spec"]["selector"], selector_labels("proxy"));
    assert_eq!(
        proxy_service["spec"]["ports"],
        json!([
            {"name": "tenants", "port": 443, "targetPort": "tenants", "protocol": "TCP"},
            {"name": "download", "port": 9444, "targetPort": "download", "protocol": "TCP"},
        ])
    );
    let proxy_metrics = find(&pods, "Service", PROXY_METRICS_SERVICE);
    assert_eq!(proxy_metrics["spec"]["type"], "ClusterIP");
    assert_eq!(proxy_metrics["spec"]["selector"], selector_labels("proxy"));
    assert_eq!(
        proxy_metrics["spec"]["ports"],
        json!([{"name": "proxy-metrics", "port": 9465, "targetPort": "proxy-metrics", "protocol": "TCP"}])
    );
    assert_eq!(
        find(&pods, "Service", "hp-hostplane-metrics")["spec"]["ports"],
        json!([{"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"}])
    );

    // Its own identity, bound to exactly what the proxy does.
    assert_eq!(
        find(&pods, "ServiceAccount", PROXY)["metadata"]["labels"],
        component_labels("proxy")
    );
    assert_eq!(
        find(&pods, "ClusterRole", PROXY)["rules"],
        expected_proxy_rules()
    );
    let binding = find(&pods, "ClusterRoleBinding", PROXY);
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": PROXY})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": PROXY, "namespace": NAMESPACE}])
    );
    // No Role anywhere for it: nothing namespaced, no Lease.
    assert!(
        !pods
            .iter()
            .any(|d| d["kind"] == "RoleBinding" && d["subjects"].to_string().contains(PROXY)),
        "a RoleBinding names the proxy"
    );

    // Without downloads: only the route table and the annotations.
    let without_downloads = render(
        &home,
        &[
            "--set",
            "controller.runtime=pods",
            "--set",
            "proxy.download.enabled=false",
        ],
    );
    assert_eq!(
        find(&without_downloads, "ClusterRole", PROXY)["rules"],
        json!([{
            "apiGroups": ["tenancy.hostplane.io"],
            "resources": ["controlplanes"],
            "verbs": ["list", "watch", "patch"],
        }])
    );
    assert!(
        !args_of(container(
            find(&without_downloads, "Deployment", PROXY),
            "proxy"
        ))
        .iter()
        .any(|a| a.starts_with("--download")),
    );

    // Scaled, spread strictly, with a shared download certificate, without a budget.
    let tuned = render(
        &home,
        &[
            "--set",
            "controller.runtime=pods",
            "--set",
            "proxy.replicas=3",
            "--set",
            "proxy.podAntiAffinity=hard",
            "--set",
            "proxy.podDisruptionBudget.enabled=false",
            "--set",
            "proxy.download.tlsSecret=proxy-download-tls",
            "--set",
            "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=edge",
            "--set",
            "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
        ],
    );
    assert!(
        !kinds_and_names(&tuned).contains(&("PodDisruptionBudget".to_owned(), PROXY.to_owned()))
    );
    let tuned_proxy = find(&tuned, "Deployment", PROXY);
    assert_eq!(tuned_proxy["spec"]["replicas"], 3);
    let pod = &tuned_proxy["spec"]["template"]["spec"];
    assert_eq!(
        pod["affinity"]["podAntiAffinity"],
        json!({"requiredDuringSchedulingIgnoredDuringExecution": [{
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": selector_labels("proxy")},
        }]})
    );
    // The shared affinity stays, for both Deployments; the anti-affinity is the proxy's only.
    let controller_pod = &find(&tuned, "Deployment", CONTROLLER_SA)["spec"]["template"]["spec"];
    assert_eq!(
        pod["affinity"]["nodeAffinity"],
        controller_pod["affinity"]["nodeAffinity"]
    );
    assert_eq!(controller_pod["affinity"].get("podAntiAffinity"), None);
    assert_eq!(
        pod["volumes"],
        json!([
            {"name": "tmp", "emptyDir": {}},
            {"name": "download-tls", "secret": {"secretName": "proxy-download-tls"}},
        ])
    );
    let proxy_container = container(tuned_proxy, "proxy");
    assert_eq!(
        proxy_container["volumeMounts"][1],
        json!({"name": "download-tls", "mountPath": "/etc/hostplane/download-tls", "readOnly": true})
    );
    let args = args_of(proxy_container);
    assert!(
        args.contains(&"--download-tls-cert=/etc/hostplane/download-tls/tls.crt".to_owned()),
        "{args:?}"
    );
    // The controller pod does not mount the proxy's certificate any more.
    assert_eq!(controller_pod["volumes"].as_array().map(Vec::len), Some(2));
    let without_anti_affinity = render(
        &home,
        &[
            "--set",
            "controller.runtime=pods",
            "--set",
            "proxy.podAntiAffinity=",
        ],
    );
    assert_eq!(
        find(&without_anti_affinity, "Deployment", PROXY)["spec"]["template"]["spec"]
            .get("affinity"),
        None
    );

    // The ServiceMonitor scrapes both metrics Services.
    let monitored = render(
        &home,
        &[
            "--set",
            "controller.runtime=pods",
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "serviceMonitor.force=true",
        ],
    );
    let monitor = find(&monitored, "ServiceMonitor", CONTROLLER_SA);
    let selector = &monitor["spec"]["selector"]["matchLabels"];
    for service in ["hp-hostplane-metrics", PROXY_METRICS_SERVICE] {
        let labels = &find(&monitored, "Service", service)["metadata"]["labels"];
        for (k, v) in selector.as_object().unwrap() {
            assert_eq!(&labels[k], v, "{service} label {k}");
        }
    }
    let ports: Vec<&Value> = monitor["spec"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["port"])
        .collect();
    assert_eq!(ports, [&json!("metrics"), &json!("proxy-metrics")]);

    // No proxy, no proxy objects.
    let without_proxy = render(
        &home,
        &[
            "--set",
            "controller.runtime=pods",
            "--set",
            "proxy.enabled=false",
        ],
    );
    let names = kinds_and_names(&without_proxy);
    assert!(
        !names.iter().any(|(_, name)| name.starts_with(PROXY)),
        "{names:?}"
    );
}

/// `kubectl auth can-i` as a ServiceAccount of the release: whether it said "yes", and all it
/// printed.
fn can_i(api: &KubeApiserver, service_account: &str, args: &[&str]) -> (bool, String) {
    let user = format!("--as=system:serviceaccount:{NAMESPACE}:{service_account}");
    let mut all = vec!["auth", "can-i", &user, "--request-timeout=30s"];
    all.extend_from_slice(args);
    let out = api.run_kubectl(&all);
    match out.stdout.trim() {
        "yes" => (true, out.combined()),
        "no" => (false, out.combined()),
        _ => panic!("kubectl auth can-i {args:?} answered:\n{}", out.combined()),
    }
}

/// A SubjectAccessReview for a kind the test apiserver does not serve (KubeVirt's), which
/// `kubectl auth can-i` cannot name: it falls back to an unqualified resource name.
fn review_unserved(
    api: &KubeApiserver,
    service_account: &str,
    verb: &str,
    group: &str,
    resource: &str,
) -> bool {
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": format!("system:serviceaccount:{NAMESPACE}:{service_account}"),
            "groups": [
                "system:serviceaccounts",
                format!("system:serviceaccounts:{NAMESPACE}"),
                "system:authenticated"
            ],
            "resourceAttributes": {
                "namespace": "acme-system",
                "verb": verb,
                "group": group,
                "resource": resource
            }
        }
    });
    let allowed = api
        .run_kubectl_with_stdin(
            &[
                "create",
                "--request-timeout=30s",
                "-f",
                "-",
                "-o",
                "jsonpath={.status.allowed}",
            ],
            &review.to_string(),
        )
        .expect_success("creating a SubjectAccessReview");
    allowed == "true"
}

fn assert_can(api: &KubeApiserver, service_account: &str, cases: &[&[&str]]) {
    for args in cases {
        let (allowed, said) = can_i(api, service_account, args);
        assert!(
            allowed,
            "{service_account} may not {args:?}, but needs to: {said}"
        );
    }
}

fn assert_cannot(api: &KubeApiserver, service_account: &str, cases: &[&[&str]]) {
    for args in cases {
        let (allowed, said) = can_i(api, service_account, args);
        assert!(
            !allowed,
            "{service_account} may {args:?}, which it must not: {said}"
        );
    }
}

fn exists(api: &KubeApiserver, args: &[&str]) -> bool {
    let mut all = vec![
        "get",
        "--request-timeout=30s",
        "--ignore-not-found",
        "-o",
        "name",
    ];
    all.extend_from_slice(args);
    let out = api.run_kubectl(&all).expect_success("kubectl get");
    !out.trim().is_empty()
}

const INSTALLED: [&[&str]; 11] = [
    &["crd", "controlplanes.tenancy.hostplane.io"],
    &["crd", "postcreatehooks.tenancy.hostplane.io"],
    &["postcreatehook", "kubevirt-nodes"],
    &["clusterrole", CONTROLLER_SA],
    &["clusterrolebinding", CONTROLLER_SA],
    &["-n", NAMESPACE, "role", LEADER_ELECTION],
    &["-n", NAMESPACE, "rolebinding", LEADER_ELECTION],
    &["-n", NAMESPACE, "serviceaccount", CONTROLLER_SA],
    &["-n", NAMESPACE, "deployment", CONTROLLER_SA],
    &["-n", NAMESPACE, "service", PROXY_SERVICE],
    &["-n", NAMESPACE, "service", "hp-hostplane-metrics"],
];

/// What the pods runtime adds: the proxy's own Deployment and identity.
const INSTALLED_WITH_PODS: [&[&str]; 6] = [
    &["clusterrole", PROXY],
    &["clusterrolebinding", PROXY],
    &["-n", NAMESPACE, "serviceaccount", PROXY],
    &["-n", NAMESPACE, "deployment", PROXY],
    &["-n", NAMESPACE, "poddisruptionbudget", PROXY],
    &["-n", NAMESPACE, "service", PROXY_METRICS_SERVICE],
];

#[tokio::test]
async fn chart_installs_least_privilege_rbac_into_a_real_apiserver_and_uninstalls() {
    let api = start_apiserver_on_etcd().await;
    let home = helm_home();
    let kubeconfig = api.kubeconfig_path().display().to_string();
    let chart = chart();
    let helm_in_cluster = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--kubeconfig", &kubeconfig, "--namespace", NAMESPACE]);
        helm(&home, &all)
    };

    let out = helm_in_cluster(&[
        "install",
        RELEASE,
        &chart,
        "--create-namespace",
        "--timeout",
        "90s",
    ]);
    assert!(out.success(), "helm install failed:\n{}", out.combined());
    assert!(out.stdout.contains("STATUS: deployed"), "{}", out.stdout);
    // NOTES.txt tells the person what to do next.
    assert!(
        out.stdout
            .contains("kubectl wait --for=condition=Ready cp/demo")
    );

    for object in INSTALLED {
        assert!(
            exists(&api, object),
            "helm install did not create {object:?}"
        );
    }
    let deployment = api
        .run_kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "deployment",
            CONTROLLER_SA,
            "-o",
            "json",
        ])
        .expect_success("kubectl get deployment");
    let deployment: Value = serde_json::from_str(&deployment).unwrap();
    assert_locked_down(&deployment);
    // The built-in hook is served with its templates intact, placeholders and all.
    let template_name = api
        .run_kubectl(&[
            "get",
            "pch",
            "kubevirt-nodes",
            "-o",
            "jsonpath={.spec.templates[0].metadata.name}",
        ])
        .expect_success("kubectl get pch");
    assert_eq!(template_name, "{{.ControlPlaneName}}-node-{{.NodeIndex}}");

    // What the controller does, it may do.
    assert_can(
        &api,
        CONTROLLER_SA,
        &[
            &["watch", "controlplanes.tenancy.hostplane.io"],
            &["patch", "controlplanes.tenancy.hostplane.io"],
            &[
                "patch",
                "controlplanes.tenancy.hostplane.io",
                "--subresource=status",
            ],
            &[
                "update",
                "controlplanes.tenancy.hostplane.io",
                "--subresource=finalizers",
            ],
            &["list", "postcreatehooks.tenancy.hostplane.io"],
            &["create", "namespaces"],
            &["delete", "namespaces"],
            &["create", "secrets", "-n", "acme-system"],
            &["patch", "secrets", "-n", "acme-system"],
            // Bootstrap and datastore Secrets users name live in their own namespaces.
            &["get", "secrets", "-n", "team-a"],
            &["create", "events.events.k8s.io", "-n", "default"],
            &["patch", "events.events.k8s.io", "-n", "default"],
            // Objects of the default hook kinds.
            &["create", "jobs.batch", "-n", "acme-system"],
            &["delete", "jobs.batch", "-n", "acme-system"],
            // Leader election on its Lease.
            &["create", "leases.coordination.k8s.io", "-n", NAMESPACE],
            &["get", LEASE, "-n", NAMESPACE],
            &["update", LEASE, "-n", NAMESPACE],
        ],
    );
    // VirtualMachines of kubevirt-nodes: applied, and deleted when node_count goes down.
    for verb in ["get", "create", "patch", "delete"] {
        assert!(
            review_unserved(&api, CONTROLLER_SA, verb, "kubevirt.io", "virtualmachines"),
            "the controller may not {verb} VirtualMachines"
        );
    }
    assert!(!review_unserved(
        &api,
        CONTROLLER_SA,
        "create",
        "kubevirt.io",
        "virtualmachineinstances"
    ));
    // What it does not do, it may not.
    assert_cannot(
        &api,
        CONTROLLER_SA,
        &[
            &["delete", "nodes"],
            &["create", "pods", "-n", "acme-system"],
            &["create", "pods", "--subresource=exec", "-n", "acme-system"],
            &["delete", "secrets", "-n", "acme-system"],
            &["create", "clusterroles.rbac.authorization.k8s.io"],
            &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
            &["bind", "clusterroles.rbac.authorization.k8s.io"],
            &["escalate", "clusterroles.rbac.authorization.k8s.io"],
            &["impersonate", "users"],
            &["impersonate", "serviceaccounts", "-n", "acme-system"],
            &["delete", "customresourcedefinitions.apiextensions.k8s.io"],
            &["delete", "controlplanes.tenancy.hostplane.io"],
            &["create", "postcreatehooks.tenancy.hostplane.io"],
            &["create", "serviceaccounts/token", "-n", "kube-system"],
            &["create", "deployments.apps", "-n", "acme-system"],
            // Nothing of the pods runtime's with the processes runtime.
            &["watch", "deployments.apps"],
            &["patch", "deployments.apps", "-n", "acme-system"],
            &["delete", "deployments.apps", "-n", "acme-system"],
            &["watch", "statefulsets.apps"],
            &["patch", "statefulsets.apps", "-n", "acme-system"],
            &["patch", "services", "-n", "acme-system"],
            &["patch", "resourcequotas", "-n", "acme-system"],
            &["patch", "limitranges", "-n", "acme-system"],
            &[
                "patch",
                "networkpolicies.networking.k8s.io",
                "-n",
                "acme-system",
            ],
            // Only its own Lease, only in its own namespace.
            &[
                "update",
                "leases.coordination.k8s.io/someone-else",
                "-n",
                NAMESPACE,
            ],
            &["create", "leases.coordination.k8s.io", "-n", "kube-system"],
            &["update", LEASE, "-n", "kube-system"],
        ],
    );
    // The proxy container shares the pod's identity; for kubeconfig downloads it authenticates
    // callers and asks host RBAC about them.
    assert_can(
        &api,
        CONTROLLER_SA,
        &[
            &["create", "tokenreviews.authentication.k8s.io"],
            &["create", "subjectaccessreviews.authorization.k8s.io"],
            &["get", "secrets/kubeconfig-minter", "-n", "acme-system"],
        ],
    );

    // Switched to the pods runtime, the controller may run tenants as Deployments: apply
    // (server-side apply is patch, plus create for new objects), read and watch Deployments,
    // scale them to zero, and delete what it applied.
    let out = helm_in_cluster(&[
        "upgrade",
        RELEASE,
        &chart,
        "--set",
        "controller.runtime=pods",
        "--timeout",
        "90s",
    ]);
    assert!(out.success(), "helm upgrade failed:\n{}", out.combined());
    let mut pods_verbs: Vec<Vec<String>> = Vec::new();
    for (group, resource, verbs) in PODS_RUNTIME_RULES {
        // Not served by this API server (no metrics-server): reviewed by group and resource.
        if group == "metrics.k8s.io" {
            for verb in verbs {
                assert!(
                    review_unserved(&api, CONTROLLER_SA, verb, group, resource),
                    "{CONTROLLER_SA} may not {verb} {resource}.{group}"
                );
            }
            continue;
        }
        let resource = if group.is_empty() {
            resource.to_owned()
        } else {
            format!("{resource}.{group}")
        };
        for verb in verbs {
            pods_verbs.push(vec![
                verb.to_string(),
                resource.clone(),
                "-n".into(),
                "acme-system".into(),
            ]);
        }
    }
    pods_verbs.push(vec!["watch".into(), "deployments.apps".into()]);
    pods_verbs.push(vec!["watch".into(), "statefulsets.apps".into()]);
    let pods_verbs: Vec<Vec<&str>> = pods_verbs
        .iter()
        .map(|args| args.iter().map(String::as_str).collect())
        .collect();
    let pods_cases: Vec<&[&str]> = pods_verbs.iter().map(Vec::as_slice).collect();
    assert_can(&api, CONTROLLER_SA, &pods_cases);
    // The Deployment controller makes the pods; the controller still touches none.
    assert_cannot(
        &api,
        CONTROLLER_SA,
        &[
            &["create", "pods", "-n", "acme-system"],
            &["create", "pods", "--subresource=exec", "-n", "acme-system"],
            &["create", "replicasets.apps", "-n", "acme-system"],
            &["create", "persistentvolumeclaims", "-n", "acme-system"],
            &["create", "configmaps", "-n", "acme-system"],
            &["update", "deployments.apps", "-n", "acme-system"],
            &[
                "update",
                "deployments.apps",
                "--subresource=scale",
                "-n",
                "acme-system",
            ],
            &["create", "serviceaccounts/token", "-n", "kube-system"],
            &[
                "create",
                "roles.rbac.authorization.k8s.io",
                "-n",
                "acme-system",
            ],
            &["impersonate", "users"],
        ],
    );
    let deployment = api
        .run_kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "deployment",
            CONTROLLER_SA,
            "-o",
            "jsonpath={.spec.template.spec.containers[*].name} {.spec.template.spec.containers[0].args}",
        ])
        .expect_success("kubectl get deployment");
    assert!(deployment.contains("--runtime=pods"), "{deployment}");
    assert!(deployment.starts_with("controller ["), "{deployment}");
    // The controller runs no proxy any more, so it reviews no tokens.
    assert_cannot(
        &api,
        CONTROLLER_SA,
        &[
            &["create", "tokenreviews.authentication.k8s.io"],
            &["create", "subjectaccessreviews.authorization.k8s.io"],
        ],
    );

    // The proxy runs as its own Deployment with its own ServiceAccount.
    for object in INSTALLED_WITH_PODS {
        assert!(
            exists(&api, object),
            "helm upgrade to the pods runtime did not create {object:?}"
        );
    }
    let proxy = api
        .run_kubectl(&["-n", NAMESPACE, "get", "deployment", PROXY, "-o", "json"])
        .expect_success("kubectl get deployment");
    let proxy: Value = serde_json::from_str(&proxy).unwrap();
    assert_locked_down(&proxy);
    assert_eq!(
        proxy["spec"]["template"]["spec"]["serviceAccountName"],
        PROXY
    );
    // What the proxy does, it may do: follow ControlPlanes, stamp their annotations, and for a
    // download read the one asked for, review the caller, and read that tenant's minter Secret.
    assert_can(
        &api,
        PROXY,
        &[
            &["list", "controlplanes.tenancy.hostplane.io"],
            &["watch", "controlplanes.tenancy.hostplane.io"],
            &["get", "controlplanes.tenancy.hostplane.io/acme"],
            &["patch", "controlplanes.tenancy.hostplane.io/acme"],
            &["create", "tokenreviews.authentication.k8s.io"],
            &["create", "subjectaccessreviews.authorization.k8s.io"],
            &["get", "secrets/kubeconfig-minter", "-n", "acme-system"],
            &["get", "secrets/kubeconfig-minter", "-n", "globex-system"],
        ],
    );
    // Nothing else: not the controller's work on ControlPlanes, no other Secret, nothing in its
    // own or any other namespace.
    assert_cannot(
        &api,
        PROXY,
        &[
            &["create", "controlplanes.tenancy.hostplane.io"],
            &["delete", "controlplanes.tenancy.hostplane.io/acme"],
            &["update", "controlplanes.tenancy.hostplane.io/acme"],
            &[
                "patch",
                "controlplanes.tenancy.hostplane.io/acme",
                "--subresource=status",
            ],
            &[
                "update",
                "controlplanes.tenancy.hostplane.io/acme",
                "--subresource=finalizers",
            ],
            &["list", "postcreatehooks.tenancy.hostplane.io"],
            // The tenant CA keys: a compromised proxy must not forge tenant identities.
            &["get", "secrets/k8s-certs", "-n", "acme-system"],
            &["get", "secrets/k8s-certs", "-n", "globex-system"],
            &["get", "secrets/admin-kubeconfig", "-n", "acme-system"],
            &["get", "secrets/component-kubeconfigs", "-n", "acme-system"],
            &["get", "secrets/datastore", "-n", "acme-system"],
            &["get", "secrets", "-n", "acme-system"],
            &["list", "secrets", "-n", "acme-system"],
            &["watch", "secrets", "-n", "acme-system"],
            &["list", "secrets", "--all-namespaces"],
            &["create", "secrets", "-n", "acme-system"],
            &["patch", "secrets/kubeconfig-minter", "-n", "acme-system"],
            &["delete", "secrets/kubeconfig-minter", "-n", "acme-system"],
            &["get", "secrets/hostplane-postgres", "-n", NAMESPACE],
            &["create", "serviceaccounts/token", "-n", "acme-system"],
            &["create", "events.events.k8s.io", "-n", NAMESPACE],
            &["create", "events", "-n", "default"],
            &["create", "leases.coordination.k8s.io", "-n", NAMESPACE],
            &["get", LEASE, "-n", NAMESPACE],
            &["update", LEASE, "-n", NAMESPACE],
            &["get", "configmaps", "-n", NAMESPACE],
            &["list", "pods", "-n", NAMESPACE],
            &["get", "services", "-n", "acme-system"],
            &["get", "deployments.apps", "-n", "acme-system"],
            &["create", "pods", "-n", "acme-system"],
            &["create", "namespaces"],
            &["list", "nodes"],
            &["impersonate", "users"],
            &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        ],
    );

    let out = helm_in_cluster(&["uninstall", RELEASE, "--timeout", "90s"]);
    assert!(out.success(), "helm uninstall failed:\n{}", out.combined());
    for object in &INSTALLED[2..] {
        assert!(
            !exists(&api, object),
            "helm uninstall left {object:?} behind"
        );
    }
    for object in INSTALLED_WITH_PODS {
        assert!(
            !exists(&api, object),
            "helm uninstall left {object:?} behind"
        );
    }
    // Helm never deletes CRDs from crds/ (that would delete every ControlPlane with them).
    assert!(exists(&api, INSTALLED[0]));
    assert_cannot(
        &api,
        PROXY,
        &[&["list", "controlplanes.tenancy.hostplane.io"]],
    );
    assert_cannot(
        &api,
        CONTROLLER_SA,
        &[&[
            "patch",
            "controlplanes.tenancy.hostplane.io",
            "--subresource=status",
        ]],
    );
}
