//! The ControlPlane/PostCreateHook API on real kube-apiservers (on etcd, and on Kine with
//! Postgres): the committed CRDs install, KubeFlex's examples are accepted, and every invalid
//! case is refused with its CEL message, as `kubectl apply` shows it to a person.

use std::path::Path;

use hostplane_tests::{
    KubeApiserver, Postgres, start_apiserver_on_etcd, start_apiserver_on_kine_postgres,
};

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
        .display()
        .to_string()
}

fn kubectl(api: &KubeApiserver, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let out = match stdin {
        Some(input) => api.run_kubectl_with_stdin(args, input),
        None => api.run_kubectl(args),
    };
    (out.success(), out.stdout, out.stderr)
}

fn apply(api: &KubeApiserver, yaml: &str) -> (bool, String) {
    let out = api.apply_yaml(yaml);
    (out.success(), out.combined())
}

fn assert_refused(api: &KubeApiserver, yaml: &str, message: &str) {
    let (ok, output) = apply(api, yaml);
    assert!(
        !ok,
        "expected refusal with {message:?}, but apply succeeded: {output}"
    );
    assert!(
        output.contains(message),
        "expected {message:?} in: {output}"
    );
}

fn cp(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

async fn check_api(api: &KubeApiserver) {
    let (ok, out, err) = kubectl(api, &["apply", "-f", &repo("crds/crds.yaml")], None);
    assert!(ok, "CRDs do not install: {out}{err}");
    hostplane_controller::embedded::wait_kinds_served(
        &api.client(),
        hostplane_crds::GROUP,
        &["ControlPlane", "PostCreateHook"],
        std::time::Duration::from_secs(60),
    )
    .await
    .expect("CRDs not served");

    // KubeFlex's examples, with only the apiVersion changed.
    for example in [
        "examples/custom-tenant.yaml",
        "examples/secure-tenant.yaml",
        "examples/demo-hook.yaml",
    ] {
        let (ok, out, err) = kubectl(api, &["apply", "-f", &repo(example)], None);
        assert!(ok, "{example} refused: {out}{err}");
    }
    let (ok, out, _) = kubectl(
        api,
        &[
            "get",
            "cp",
            "custom-tenant",
            "-o",
            "jsonpath={.spec.backend} {.spec.tokenExpirationSeconds} {.spec.postCreateHooks[1].vars.network_policy}",
        ],
        None,
    );
    assert!(ok);
    assert_eq!(out, "dedicated 7200 strict");
    // Defaults come from the schema.
    let (_, out, _) = kubectl(
        api,
        &[
            "get",
            "cp",
            "secure-tenant",
            "-o",
            "jsonpath={.spec.backend} {.spec.tokenExpirationSeconds} {.spec.postCreateHooks[0].vars.node_count}",
        ],
        None,
    );
    assert_eq!(out, "shared 7200 3");
    // Hook templates keep their placeholders and every field.
    let (_, out, _) = kubectl(
        api,
        &[
            "get",
            "pch",
            "demo-hook",
            "-o",
            "jsonpath={.spec.templates[0].metadata.name} {.spec.templates[0].spec.backoffLimit}",
        ],
        None,
    );
    assert_eq!(out, "demo-job-{{.ControlPlaneName}} 1");

    // `kubectl get cp` columns.
    let (ok, out, err) = kubectl(api, &["get", "cp"], None);
    assert!(ok, "{err}");
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "TYPE", "BACKEND", "VERSION", "READY", "AGE"]
    );
    assert!(
        out.lines().any(|l| l
            .split_whitespace()
            .take(3)
            .eq(["custom-tenant", "k8s", "dedicated"])),
        "{out}"
    );

    // Every invalid case, with the message a person reads.
    assert_refused(
        api,
        &cp("short-token", "  tokenExpirationSeconds: 599\n"),
        "tokenExpirationSeconds must be between 600 (the TokenRequest minimum) and 31536000 (one year)",
    );
    assert_refused(
        api,
        &cp("long-token", "  tokenExpirationSeconds: 31536001\n"),
        "tokenExpirationSeconds must be between 600",
    );
    assert_refused(
        api,
        &cp(
            "no-hook-name",
            "  postCreateHooks:\n  - vars:\n      a: b\n",
        ),
        "hookName is required: name the PostCreateHook to run",
    );
    assert_refused(
        api,
        &cp(
            "bad-hook-name",
            "  postCreateHooks:\n  - hookName: Not_A_DNS_Name\n",
        ),
        "hookName must be a DNS subdomain name",
    );
    assert_refused(
        api,
        &cp("ext", "  type: external\n"),
        "bootstrapSecretRef is required when type is external",
    );
    assert_refused(
        api,
        &cp("bad-version", "  version: v1.37\n"),
        "version must be a Kubernetes minor version such as \"1.37\"",
    );
    assert_refused(
        api,
        &cp("patch-version", "  version: 1.37.2\n"),
        "version must be a Kubernetes minor version",
    );
    assert_refused(
        api,
        "apiVersion: tenancy.hostplane.io/v1alpha1\nkind: PostCreateHook\nmetadata:\n  name: dup\nspec:\n  defaultVars:\n  - name: a\n    value: \"1\"\n  - name: a\n    value: \"2\"\n",
        "defaultVars names must be unique",
    );
    let long = "a".repeat(57);
    assert_refused(
        api,
        &cp(&long, "  type: k8s\n"),
        "a ControlPlane name must be at most 56 characters",
    );
    // Immutable after create.
    let (ok, out) = apply(api, &cp("immutable", "  type: k8s\n  backend: shared\n"));
    assert!(ok, "{out}");
    assert_refused(
        api,
        &cp("immutable", "  type: host\n  backend: shared\n"),
        "type is immutable: delete and recreate the ControlPlane to change it",
    );
    assert_refused(
        api,
        &cp("immutable", "  type: k8s\n  backend: dedicated\n"),
        "backend is immutable: the tenant's data lives there",
    );
    // A mutable field still changes.
    let (ok, out) = apply(
        api,
        &cp(
            "immutable",
            "  type: k8s\n  backend: shared\n  tokenExpirationSeconds: 3600\n",
        ),
    );
    assert!(ok, "{out}");
}

#[tokio::test]
async fn api_on_kube_apiserver_with_etcd() {
    let api = start_apiserver_on_etcd().await;
    check_api(&api).await;
}

#[tokio::test]
async fn api_on_kube_apiserver_with_kine_and_postgres() {
    let postgres = Postgres::start().await;
    let api = start_apiserver_on_kine_postgres(&postgres).await;
    check_api(&api).await;
    // The objects really are rows in Postgres, through Kine.
    let rows = postgres
        .query_strings("SELECT name FROM kine WHERE name LIKE '%controlplanes/custom-tenant'")
        .await;
    assert!(!rows.is_empty(), "custom-tenant is not stored in Postgres");
}
