//! Objects the controller keeps inside a tenant API server to hold the tenant to its limits:
//! an API Priority and Fairness level for the tenant's own users, and, while the tenant is over
//! its storage quota, an admission policy refusing creates and updates. Pure; applied by
//! `reconcile::limits` with server-side apply (field manager `hostplane`).
//!
//! Who counts as "the tenant's users": everyone but the control plane. The control plane is
//! the API server itself (`system:apiserver`), kube-controller-manager and kube-scheduler
//! (their client certificates, and the per-controller service accounts in `kube-system` that
//! kube-controller-manager runs its controllers as with `--use-service-account-credentials`),
//! kubelets (group `system:nodes`), and the controller itself (`hostplane-controller`, group
//! `system:masters`). `kube-system/hostplane-admin`, the service account behind every handed-out
//! kubeconfig, lives in `kube-system` too but is the tenant's: it is named explicitly.

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration};
use serde_json::{Value, json};

use crate::build::pods::from_json;
use crate::provision::tenant_access::{ADMIN_NAMESPACE, ADMIN_SERVICE_ACCOUNT};

/// Field manager of everything here (one call site: `reconcile::limits`).
pub const FIELD_MANAGER: &str = "hostplane";
/// The controller's user in the tenant (CN of its `admin.crt`).
pub const CONTROLLER_USER: &str = "hostplane-controller";

/// Name of the priority level, and prefix of the flow schemas, of the tenant's users.
pub const PRIORITY_LEVEL: &str = "hostplane-tenant-users";
/// Flow schema of the handed-out admin service account: before the suggested
/// `kube-system-service-accounts` (precedence 900), which would give it `workload-high`, and
/// after `kube-controller-manager` and `kube-scheduler` (800).
pub const ADMIN_FLOW_SCHEMA: &str = "hostplane-tenant-admin";
pub const ADMIN_FLOW_PRECEDENCE: i32 = 850;
/// Flow schema of every other authenticated user that no system schema matched first: before
/// the suggested `service-accounts` (9000) and `global-default` (9900), after every schema of
/// the control plane (all below 1000).
pub const USERS_FLOW_SCHEMA: &str = "hostplane-tenant-users";
pub const USERS_FLOW_PRECEDENCE: i32 = 8000;

/// Name of the storage quota's admission policy and of its binding.
pub const QUOTA_POLICY: &str = "hostplane-storage-quota";

fn labels() -> Value {
    json!({"app.kubernetes.io/managed-by": "hostplane"})
}

/// The priority level of the tenant's users: limited and queued, each user a flow of its own.
///
/// 30 nominal shares against the suggested levels' 245 (workload-low 100, workload-high 40,
/// node-high 40, system 30, global-default 20, leader-election 10, catch-all 5) give the
/// tenant's users about a ninth of the server's concurrency (`--max-requests-inflight` plus
/// `--max-mutating-requests-inflight`) of their own, and they may borrow what other levels
/// lend; what is left of the rest stays with the control plane. Requests over the seats wait in
/// 64 queues, each flow (a user, `ByUser`) shuffle-sharded onto 6 of them: a user's storm fills
/// its own queues and waits behind its own requests, while another user's flow almost surely
/// has a queue the storm does not. A full queue (50) is answered with 429, which clients retry.
pub fn priority_level() -> PriorityLevelConfiguration {
    from_json(json!({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "PriorityLevelConfiguration",
        "metadata": {"name": PRIORITY_LEVEL, "labels": labels()},
        "spec": {
            "type": "Limited",
            "limited": {
                "nominalConcurrencyShares": 30,
                "lendablePercent": 0,
                "limitResponse": {
                    "type": "Queue",
                    "queuing": {"queues": 64, "handSize": 6, "queueLengthLimit": 50},
                },
            },
        },
    }))
}

fn flow_schema(name: &str, precedence: i32, subjects: Value) -> FlowSchema {
    from_json(json!({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": name, "labels": labels()},
        "spec": {
            "priorityLevelConfiguration": {"name": PRIORITY_LEVEL},
            "matchingPrecedence": precedence,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{
                "subjects": subjects,
                "resourceRules": [{
                    "verbs": ["*"],
                    "apiGroups": ["*"],
                    "resources": ["*"],
                    "clusterScope": true,
                    "namespaces": ["*"],
                }],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            }],
        },
    }))
}

/// The tenant's flow schemas: its admin service account, then every other user that reaches
/// `USERS_FLOW_PRECEDENCE` (the control plane's schemas all match earlier).
pub fn flow_schemas() -> Vec<FlowSchema> {
    vec![
        flow_schema(
            ADMIN_FLOW_SCHEMA,
            ADMIN_FLOW_PRECEDENCE,
            json!([{"kind": "ServiceAccount", "serviceAccount": {
                "namespace": ADMIN_NAMESPACE, "name": ADMIN_SERVICE_ACCOUNT,
            }}]),
        ),
        flow_schema(
            USERS_FLOW_SCHEMA,
            USERS_FLOW_PRECEDENCE,
            json!([
                {"kind": "Group", "group": {"name": "system:authenticated"}},
                {"kind": "Group", "group": {"name": "system:unauthenticated"}},
            ]),
        ),
    ]
}

/// CEL: the request comes from the control plane (see the module comment), which keeps writing
/// while the tenant is read-only.
fn from_control_plane() -> String {
    let admin = format!("system:serviceaccount:{ADMIN_NAMESPACE}:{ADMIN_SERVICE_ACCOUNT}");
    format!(
        "request.userInfo.username in ['system:apiserver', 'system:kube-controller-manager', \
         'system:kube-scheduler', '{CONTROLLER_USER}'] \
         || ('system:nodes' in request.userInfo.groups) \
         || (request.userInfo.username.startsWith('system:serviceaccount:kube-system:') \
         && request.userInfo.username != '{admin}')"
    )
}

/// The policy refusing creates and updates of a tenant over its storage quota with `message`.
///
/// Refused: CREATE and UPDATE (a patch is an update) of every resource — not subresources, so
/// status updates, scaling, evictions and token requests of what exists still work. Not
/// refused: leases (leader election, node heartbeats) and Events, which expire by themselves;
/// reviews (`auth can-i`, TokenReview), which store nothing; anything the control plane does.
/// Deletes are never matched, so users can always free space.
pub fn quota_policy(message: &str) -> ValidatingAdmissionPolicy {
    let any = |group: &str, resources: &[&str]| {
        json!({
            "apiGroups": [group],
            "apiVersions": ["*"],
            "operations": ["*"],
            "resources": resources,
        })
    };
    from_json(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": QUOTA_POLICY, "labels": labels()},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [{
                    "apiGroups": ["*"],
                    "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["*"],
                    "scope": "*",
                }],
                "excludeResourceRules": [
                    any("coordination.k8s.io", &["leases"]),
                    any("", &["events"]),
                    any("events.k8s.io", &["events"]),
                    any("authentication.k8s.io", &["*"]),
                    any("authorization.k8s.io", &["*"]),
                ],
            },
            "matchConditions": [{
                "name": "not-the-control-plane",
                "expression": format!("!({})", from_control_plane()),
            }],
            "validations": [{
                "expression": "false",
                "message": message,
                "reason": "Forbidden",
            }],
        },
    }))
}

/// Binds `quota_policy` to every request it matches, denying them.
pub fn quota_binding() -> ValidatingAdmissionPolicyBinding {
    from_json(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": QUOTA_POLICY, "labels": labels()},
        "spec": {
            "policyName": QUOTA_POLICY,
            "validationActions": ["Deny"],
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::pods::tests::to_json;

    fn rule(group: &str, resources: &[&str]) -> Value {
        json!({"apiGroups": [group], "apiVersions": ["*"], "operations": ["*"], "resources": resources})
    }

    #[test]
    fn the_quota_policy_refuses_creates_and_updates_but_not_the_control_plane() {
        assert_eq!(
            to_json(&quota_policy("tenant acme is over its storage quota")),
            json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": {
                    "name": "hostplane-storage-quota",
                    "labels": {"app.kubernetes.io/managed-by": "hostplane"},
                },
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {
                        "resourceRules": [{
                            "apiGroups": ["*"], "apiVersions": ["*"],
                            "operations": ["CREATE", "UPDATE"], "resources": ["*"], "scope": "*",
                        }],
                        "excludeResourceRules": [
                            rule("coordination.k8s.io", &["leases"]),
                            rule("", &["events"]),
                            rule("events.k8s.io", &["events"]),
                            rule("authentication.k8s.io", &["*"]),
                            rule("authorization.k8s.io", &["*"]),
                        ],
                    },
                    "matchConditions": [{
                        "name": "not-the-control-plane",
                        "expression": "!(request.userInfo.username in ['system:apiserver', \
                            'system:kube-controller-manager', 'system:kube-scheduler', \
                            'hostplane-controller'] || ('system:nodes' in request.userInfo.groups) \
                            || (request.userInfo.username.startsWith('system:serviceaccount:kube-system:') \
                            && request.userInfo.username != 'system:serviceaccount:kube-system:hostplane-admin'))",
                    }],
                    "validations": [{
                        "expression": "false",
                        "message": "tenant acme is over its storage quota",
                        "reason": "Forbidden",
                    }],
                },
            })
        );
        assert_eq!(
            to_json(&quota_binding()),
            json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {
                    "name": "hostplane-storage-quota",
                    "labels": {"app.kubernetes.io/managed-by": "hostplane"},
                },
                "spec": {"policyName": "hostplane-storage-quota", "validationActions": ["Deny"]},
            })
        );
    }

    #[test]
    fn tenant_users_get_a_queued_priority_level_one_flow_per_user() {
        assert_eq!(
            to_json(&priority_level()),
            json!({
                "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
                "kind": "PriorityLevelConfiguration",
                "metadata": {
                    "name": "hostplane-tenant-users",
                    "labels": {"app.kubernetes.io/managed-by": "hostplane"},
                },
                "spec": {
                    "type": "Limited",
                    "limited": {
                        "nominalConcurrencyShares": 30,
                        "lendablePercent": 0,
                        "limitResponse": {
                            "type": "Queue",
                            "queuing": {"queues": 64, "handSize": 6, "queueLengthLimit": 50},
                        },
                    },
                },
            })
        );
        let every_request = json!({
            "resourceRules": [{
                "verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                "clusterScope": true, "namespaces": ["*"],
            }],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
        });
        let schema = |name: &str, precedence: i32, subjects: Value| {
            let mut rule = every_request.clone();
            rule["subjects"] = subjects;
            json!({
                "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
                "kind": "FlowSchema",
                "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "hostplane"}},
                "spec": {
                    "priorityLevelConfiguration": {"name": "hostplane-tenant-users"},
                    "matchingPrecedence": precedence,
                    "distinguisherMethod": {"type": "ByUser"},
                    "rules": [rule],
                },
            })
        };
        assert_eq!(
            flow_schemas().iter().map(to_json).collect::<Vec<_>>(),
            [
                schema(
                    "hostplane-tenant-admin",
                    850,
                    json!([{"kind": "ServiceAccount", "serviceAccount": {
                        "namespace": "kube-system", "name": "hostplane-admin"}}])
                ),
                schema(
                    "hostplane-tenant-users",
                    8000,
                    json!([
                        {"kind": "Group", "group": {"name": "system:authenticated"}},
                        {"kind": "Group", "group": {"name": "system:unauthenticated"}},
                    ])
                ),
            ]
        );
    }
}
