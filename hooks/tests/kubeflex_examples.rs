//! KubeFlex's documented PostCreateHooks (examples/hooks/, copied from KubeFlex's user guide
//! and the samples it links, with only the apiVersion changed) parse as our PostCreateHook and
//! render, for a ControlPlane written as KubeFlex documents them, into exactly the objects
//! KubeFlex would create in the tenant's namespace.

use std::collections::BTreeMap;
use std::path::Path;

use hostplane_crds::{ControlPlane, PostCreateHook};
use hostplane_hooks::{hook_uses, place_in_namespace, render_hook, variables};
use serde_json::{Value, json};

fn example_hook(file: &str) -> PostCreateHook {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/hooks")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let hook: PostCreateHook = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a PostCreateHook: {e}", path.display()));
    assert!(
        text.contains("apiVersion: tenancy.hostplane.io/v1alpha1\nkind: PostCreateHook\n"),
        "{file} keeps KubeFlex's text with our apiVersion"
    );
    assert!(
        text.starts_with("# ") && text.contains("https://github.com/kubestellar/kubeflex/blob/"),
        "{file} names its KubeFlex source"
    );
    hook
}

fn control_plane(yaml: &str) -> ControlPlane {
    serde_yaml::from_str(yaml).expect("a ControlPlane")
}

/// Renders every hook `cp` asks for, as the controller does: each use's layered variables,
/// the hook's templates, the objects placed in `<cp>-system`.
fn render_for(cp: &ControlPlane, hooks: &[PostCreateHook]) -> Vec<Value> {
    let name = cp
        .metadata
        .name
        .as_deref()
        .expect("the ControlPlane has a name");
    let namespace = format!("{name}-system");
    let mut objects = Vec::new();
    for hook_use in hook_uses(cp) {
        let hook = hooks
            .iter()
            .find(|hook| hook.metadata.name.as_deref() == Some(&hook_use.hook_name))
            .unwrap_or_else(|| panic!("no example hook {}", hook_use.hook_name));
        let vars = variables(hook, &hook_use, name, &cp.spec.global_vars, &namespace);
        for mut object in render_hook(hook, &vars).expect("rendering an example hook") {
            place_in_namespace(&mut object, &namespace);
            objects.push(object);
        }
    }
    objects
}

/// The Job of KubeFlex's hello hooks, printing `echo ARGS...`.
fn hello_job(namespace: &str, command: &[&str]) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "hello", "namespace": namespace},
        "spec": {
            "template": {
                "spec": {
                    "containers": [{
                        "name": "hello",
                        "image": "public.ecr.aws/docker/library/busybox:1.36",
                        "command": command
                    }],
                    "restartPolicy": "Never"
                }
            },
            "backoffLimit": 1
        }
    })
}

#[test]
fn the_user_guides_hello_hook_runs_its_job_in_the_tenant_namespace() {
    let hello = example_hook("hello.yaml");
    assert_eq!(hello.metadata.name.as_deref(), Some("hello"));
    assert_eq!(
        hello.metadata.labels,
        Some(BTreeMap::from([(
            "mylabelkey".to_owned(),
            "mylabelvalue".to_owned()
        )]))
    );
    assert!(hello.spec.default_vars.is_empty());
    // The user guide's ControlPlane with the single-hook form and a var the hook ignores.
    let cp1 = control_plane(
        "apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: cp1\n\
         spec:\n  backend: shared\n  postCreateHook: hello\n  postCreateHookVars:\n    version: \"0.1.0\"\n  type: k8s\n",
    );
    assert_eq!(
        render_for(&cp1, &[hello]),
        vec![hello_job("cp1-system", &["echo", "Hello", "World"])]
    );
}

#[test]
fn the_hello_sample_prints_its_default_message_unless_a_control_plane_sets_one() {
    let hello = example_hook("hello-default-vars.yaml");
    assert_eq!(hello.metadata.name.as_deref(), Some("hello"));
    let cp1 = control_plane(
        "apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: cp1\n\
         spec:\n  backend: shared\n  postCreateHook: hello\n  type: k8s\n",
    );
    assert_eq!(
        render_for(&cp1, std::slice::from_ref(&hello)),
        vec![hello_job(
            "cp1-system",
            &["echo", "Hello from Defaults", "World"]
        )]
    );
    // globalVars override defaultVars, and a hook's own vars override globalVars.
    let global = control_plane(
        "apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: cp2\n\
         spec:\n  type: k8s\n  postCreateHooks:\n  - hookName: hello\n  globalVars:\n    MESSAGE: Hello from globalVars\n",
    );
    assert_eq!(
        render_for(&global, std::slice::from_ref(&hello)),
        vec![hello_job(
            "cp2-system",
            &["echo", "Hello from globalVars", "World"]
        )]
    );
    let per_hook = control_plane(
        "apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: cp3\n\
         spec:\n  type: k8s\n  postCreateHooks:\n  - hookName: hello\n    vars:\n      MESSAGE: Hello from vars\n\
         \x20 globalVars:\n    MESSAGE: Hello from globalVars\n",
    );
    assert_eq!(
        render_for(&per_hook, &[hello]),
        vec![hello_job(
            "cp3-system",
            &["echo", "Hello from vars", "World"]
        )]
    );
}

#[test]
fn the_openshift_crds_and_postgres_samples_render_with_the_built_in_names() {
    let hooks = [
        example_hook("openshift-crds.yaml"),
        example_hook("postgres.yaml"),
    ];
    assert_eq!(
        hooks[0].metadata.labels,
        Some(BTreeMap::from([(
            "kflex.kubestellar.io/flavor".to_owned(),
            "openshift".to_owned()
        )]))
    );
    // Both hooks at once, in the list form the user guide recommends.
    let cp = control_plane(
        "apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: wds1\n\
         spec:\n  type: k8s\n  backend: shared\n  postCreateHooks:\n  - hookName: openshift-crds\n  - hookName: postgres\n\
         \x20 waitForPostCreateHooks: true\n",
    );
    let helm = "quay.io/kubestellar/helm:3.16.4";
    assert_eq!(
        render_for(&cp, &hooks),
        vec![
            json!({
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": "openshift-crds", "namespace": "wds1-system"},
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [{
                                "name": "openshift-crds",
                                "image": helm,
                                "args": [
                                    "upgrade", "--install", "openshift-crds",
                                    "oci://quay.io/kubestellar/openshift-crds", "--version", "0.1.0"
                                ],
                                "env": [{"name": "KUBECONFIG", "value": "/etc/kube/kubeconfig-incluster"}],
                                "volumeMounts": [{"name": "kubeconfig", "mountPath": "/etc/kube", "readOnly": true}]
                            }],
                            "volumes": [{"name": "kubeconfig", "secret": {"secretName": "admin-kubeconfig"}}],
                            "restartPolicy": "Never"
                        }
                    },
                    "backoffLimit": 1
                }
            }),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "postgres", "namespace": "wds1-system"},
                "rules": [
                    {"apiGroups": ["apps"], "resources": ["statefulsets"], "verbs": ["get", "create"]},
                    {
                        "apiGroups": [""],
                        "resources": ["secrets", "services"],
                        "verbs": ["get", "create", "list", "update"]
                    }
                ]
            }),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "postgres", "namespace": "wds1-system"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "postgres"},
                "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "wds1-system"}]
            }),
            json!({
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": "postgres", "namespace": "wds1-system"},
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [{
                                "name": "postgres",
                                "image": helm,
                                "args": [
                                    "upgrade", "--install", "-n", "wds1-system", "postgres",
                                    "oci://quay.io/kubestellar/charts/postgresql", "--version", "13.1.5"
                                ]
                            }],
                            "restartPolicy": "Never"
                        }
                    },
                    "backoffLimit": 1
                }
            }),
        ]
    );
}
