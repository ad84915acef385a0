//! Hooks hostplane ships, and rendering a hook once per node.

use std::collections::BTreeMap;

use hostplane_crds::PostCreateHook;
use serde_json::Value;

use crate::render::{RenderError, render_hook};

/// Name of the built-in hook that creates worker nodes as KubeVirt VirtualMachines.
pub const KUBEVIRT_NODES: &str = "kubevirt-nodes";

/// How many nodes a hook is rendered for (`node_count`).
pub const NODE_COUNT_VAR: &str = "node_count";
/// Built-in variable of per-node rendering: the node's ordinal, from 0.
pub const NODE_INDEX_VAR: &str = "NodeIndex";
/// Built-in variable the controller provides: `host:port` of the tenant's API server as
/// nodes reach it (the argument of `kubeadm join`).
pub const JOIN_ENDPOINT_VAR: &str = "JoinEndpoint";
/// Built-in variable the controller provides: a bootstrap token of the tenant,
/// `[a-z0-9]{6}.[a-z0-9]{16}`. Never quoted in error messages.
pub const BOOTSTRAP_TOKEN_VAR: &str = "BootstrapToken";
/// Built-in variable the controller provides: `sha256:<hex>` of the tenant CA's public key
/// (`--discovery-token-ca-cert-hash`).
pub const CA_CERT_HASH_VAR: &str = "CACertHash";

/// The most nodes one hook use may ask for: a typo in `node_count` must not turn into
/// thousands of VirtualMachines.
pub const MAX_NODE_COUNT: u32 = 64;

const KUBEVIRT_NODES_YAML: &str = include_str!("../builtin/kubevirt-nodes.yaml");

/// The hooks hostplane ships; a ControlPlane names them like any PostCreateHook.
pub fn builtin_hooks() -> Vec<PostCreateHook> {
    vec![
        serde_yaml::from_str(KUBEVIRT_NODES_YAML)
            .expect("builtin/kubevirt-nodes.yaml is a PostCreateHook (a unit test parses it)"),
    ]
}

/// The built-in hook called `name`, if there is one.
pub fn builtin_hook(name: &str) -> Option<PostCreateHook> {
    builtin_hooks()
        .into_iter()
        .find(|hook| hook.metadata.name.as_deref() == Some(name))
}

/// Renders `hook` once per node — `node_count` times, with `NodeIndex` set to 0, 1, ... —
/// and returns the objects of all nodes, node by node. This is how [`KUBEVIRT_NODES`] makes
/// one VirtualMachine per node: Go templates cannot repeat an object, so the count lives
/// here rather than in the template. `vars` are those of [`crate::variables`] plus the
/// join built-ins; `NodeIndex` overrides any value of the same name.
pub fn render_hook_per_node(
    hook: &PostCreateHook,
    vars: &BTreeMap<String, String>,
) -> Result<Vec<Value>, RenderError> {
    let hook_name = hook.metadata.name.clone().unwrap_or_default();
    let invalid = |value: &str, reason: String| RenderError::InvalidVariable {
        hook: hook_name.clone(),
        name: NODE_COUNT_VAR.to_owned(),
        value: value.to_owned(),
        reason,
    };
    let count_text = vars
        .get(NODE_COUNT_VAR)
        .ok_or_else(|| invalid("", "is not set".to_owned()))?;
    let count: u32 = count_text
        .trim()
        .parse()
        .map_err(|_| invalid(count_text, "is not a whole number".to_owned()))?;
    if count > MAX_NODE_COUNT {
        return Err(invalid(
            count_text,
            format!("is above the limit of {MAX_NODE_COUNT} nodes"),
        ));
    }
    let mut node_vars = vars.clone();
    let mut objects = Vec::new();
    for index in 0..count {
        node_vars.insert(NODE_INDEX_VAR.to_owned(), index.to_string());
        objects.extend(render_hook(hook, &node_vars)?);
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use hostplane_crds::Var;
    use serde_json::json;

    use super::*;
    use crate::render::{HookUse, place_in_namespace, variables};

    const TOKEN: &str = "abcdef.0123456789abcdef";
    const CA_HASH: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn kubevirt_nodes() -> PostCreateHook {
        builtin_hook(KUBEVIRT_NODES).expect("kubevirt-nodes is built in")
    }

    /// What the controller will hand `render_hook_per_node`: the layered variables plus the
    /// join built-ins.
    fn node_vars(cp: &str, per_hook: &[(&str, &str)]) -> BTreeMap<String, String> {
        let hook_use = HookUse {
            hook_name: KUBEVIRT_NODES.to_owned(),
            vars: per_hook
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        };
        let namespace = format!("{cp}-system");
        let mut vars = variables(
            &kubevirt_nodes(),
            &hook_use,
            cp,
            &BTreeMap::new(),
            &namespace,
        );
        vars.insert(
            JOIN_ENDPOINT_VAR.to_owned(),
            format!("{cp}.tenants.example:6443"),
        );
        vars.insert(BOOTSTRAP_TOKEN_VAR.to_owned(), TOKEN.to_owned());
        vars.insert(CA_CERT_HASH_VAR.to_owned(), CA_HASH.to_owned());
        vars
    }

    fn render_placed(cp: &str, vars: &BTreeMap<String, String>) -> Vec<Value> {
        let mut objects = render_hook_per_node(&kubevirt_nodes(), vars).unwrap();
        for object in &mut objects {
            place_in_namespace(object, &format!("{cp}-system"));
        }
        objects
    }

    fn expected_vm(cp: &str, index: u32, cpu: &str, memory: &str) -> Value {
        let user_data = format!(
            "#cloud-config\n\
             hostname: {cp}-node-{index}\n\
             fs_setup:\n\
             - label: kubelet\n  filesystem: ext4\n  device: /dev/disk/by-id/virtio-scratch\n\
             mounts:\n\
             - [LABEL=kubelet, /var/lib/kubelet, ext4, \"defaults,nofail\", \"0\", \"2\"]\n\
             runcmd:\n\
             - kubeadm join {cp}.tenants.example:6443 --token {TOKEN} --discovery-token-ca-cert-hash {CA_HASH}\n"
        );
        json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {
                "name": format!("{cp}-node-{index}"),
                "namespace": format!("{cp}-system"),
                "labels": {
                    "app.kubernetes.io/managed-by": "hostplane"
                }
            },
            "spec": {
                "runStrategy": "Always",
                "template": {
                    "metadata": {
                        "labels": {
                            "tenancy.hostplane.io/controlplane": cp,
                            "tenancy.hostplane.io/node-index": index.to_string()
                        }
                    },
                    "spec": {
                        "domain": {
                            "resources": {"requests": {"cpu": cpu, "memory": memory}},
                            "devices": {
                                "disks": [
                                    {"name": "root", "disk": {"bus": "virtio"}},
                                    {"name": "scratch", "serial": "scratch", "disk": {"bus": "virtio"}},
                                    {"name": "cloudinit", "disk": {"bus": "virtio"}}
                                ],
                                "interfaces": [{"name": "default", "masquerade": {}}]
                            }
                        },
                        "networks": [{"name": "default", "pod": {}}],
                        "volumes": [
                            {"name": "root", "containerDisk": {"image": "quay.io/containerdisks/ubuntu:24.04"}},
                            {"name": "scratch", "emptyDisk": {"capacity": "10Gi"}},
                            {"name": "cloudinit", "cloudInitNoCloud": {"userData": user_data}}
                        ]
                    }
                }
            }
        })
    }

    #[test]
    fn kubevirt_nodes_is_built_in_with_its_default_vars() {
        let hooks = builtin_hooks();
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0].metadata.name.as_deref(), Some(KUBEVIRT_NODES));
        assert_eq!(hooks[0].spec.templates.len(), 1);
        let default = |name: &str, value: &str| Var {
            name: name.to_owned(),
            value: value.to_owned(),
        };
        assert_eq!(
            hooks[0].spec.default_vars,
            vec![
                default("node_count", "1"),
                default("vm_memory", "2Gi"),
                default("vm_cpu", "1"),
                default("image", "quay.io/containerdisks/ubuntu:24.04"),
                default("scratch_disk_size", "10Gi"),
            ]
        );
        assert_eq!(builtin_hook("no-such-hook"), None);
    }

    #[test]
    fn kubevirt_nodes_renders_one_virtual_machine_per_node() {
        let vars = node_vars(
            "t1",
            &[("node_count", "2"), ("vm_memory", "4Gi"), ("vm_cpu", "2")],
        );
        assert_eq!(
            render_placed("t1", &vars),
            vec![
                expected_vm("t1", 0, "2", "4Gi"),
                expected_vm("t1", 1, "2", "4Gi"),
            ]
        );
    }

    #[test]
    fn kubevirt_nodes_defaults_to_one_small_node() {
        let vars = node_vars("t2", &[]);
        assert_eq!(
            render_placed("t2", &vars),
            vec![expected_vm("t2", 0, "1", "2Gi")]
        );
    }

    #[test]
    fn kubevirt_nodes_without_the_join_builtins_names_the_first_missing_one() {
        let mut vars = node_vars("t1", &[]);
        vars.remove(JOIN_ENDPOINT_VAR);
        vars.remove(BOOTSTRAP_TOKEN_VAR);
        assert_eq!(
            render_hook_per_node(&kubevirt_nodes(), &vars),
            Err(RenderError::MissingVariable {
                hook: KUBEVIRT_NODES.to_owned(),
                index: 0,
                name: JOIN_ENDPOINT_VAR.to_owned(),
            })
        );
    }

    #[test]
    fn node_count_must_be_a_whole_number_up_to_the_limit() {
        let invalid = |value: &str, reason: &str| {
            Err(RenderError::InvalidVariable {
                hook: KUBEVIRT_NODES.to_owned(),
                name: NODE_COUNT_VAR.to_owned(),
                value: value.to_owned(),
                reason: reason.to_owned(),
            })
        };
        let with_count = |count: &str| node_vars("t1", &[("node_count", count)]);
        let hook = kubevirt_nodes();
        assert_eq!(
            render_hook_per_node(&hook, &with_count("two")),
            invalid("two", "is not a whole number")
        );
        assert_eq!(
            render_hook_per_node(&hook, &with_count("-1")),
            invalid("-1", "is not a whole number")
        );
        assert_eq!(
            render_hook_per_node(&hook, &with_count("65")),
            invalid("65", "is above the limit of 64 nodes")
        );
        let mut unset = with_count("1");
        unset.remove(NODE_COUNT_VAR);
        assert_eq!(
            render_hook_per_node(&hook, &unset),
            invalid("", "is not set")
        );
        assert_eq!(render_hook_per_node(&hook, &with_count("0")), Ok(vec![]));
    }
}
