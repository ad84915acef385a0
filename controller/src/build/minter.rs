//! What the kubeconfig download endpoint may use, and nothing more: a tenant ServiceAccount whose
//! only permission is to request tokens for the handed-out account, and the host Secret
//! `<cp>-system/kubeconfig-minter` holding an expiring token of it and the CAs to trust.
//!
//! The endpoint runs in the internet-facing proxy; it used to read `k8s-certs`, whose CA keys
//! would let a compromised proxy forge any identity in every tenant for as long as the CAs live.
//! With this Secret it can do what it did (mint expiring handed-out tokens) only while the
//! controller keeps renewing it, and nothing else.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::build::objects::{MANAGED_BY, MANAGED_BY_LABEL, token_secret};
use crate::validate::TenantPlan;

/// Host Secret in `<cp>-system` the download endpoint reads (and the only one it may read).
pub const MINTER_SECRET: &str = "kubeconfig-minter";
/// Its keys: the CA bundle handed-out kubeconfigs trust, and the minter's bearer token.
pub const MINTER_CA_KEY: &str = "ca.crt";
pub const MINTER_TOKEN_KEY: &str = "token";
/// The tenant ServiceAccount (and its Role and RoleBinding) behind the minter token.
pub const MINTER_SERVICE_ACCOUNT: &str = "hostplane-kubeconfig-minter";
/// Lifetime of the minter token: short, so a leaked one is soon worthless; renewed at the
/// controller's token renew fraction like handed-out tokens.
pub const MINTER_TOKEN_TTL_SECONDS: i64 = 3600;

fn tenant_meta(name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(BTreeMap::from([(
            MANAGED_BY_LABEL.to_string(),
            MANAGED_BY.to_string(),
        )])),
        ..Default::default()
    }
}

/// The minter's ServiceAccount in the tenant's `namespace`.
pub fn minter_service_account(namespace: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: tenant_meta(MINTER_SERVICE_ACCOUNT, namespace),
        ..Default::default()
    }
}

/// The minter's only permission: `create serviceaccounts/token` for `handed_out_account` in
/// `namespace` (TokenRequest names the account in its path, so `resourceNames` applies).
pub fn minter_role(namespace: &str, handed_out_account: &str) -> Role {
    Role {
        metadata: tenant_meta(MINTER_SERVICE_ACCOUNT, namespace),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["serviceaccounts/token".into()]),
            resource_names: Some(vec![handed_out_account.into()]),
            verbs: vec!["create".into()],
            ..Default::default()
        }]),
    }
}

/// Binds [`minter_role`] to [`minter_service_account`].
pub fn minter_role_binding(namespace: &str) -> RoleBinding {
    RoleBinding {
        metadata: tenant_meta(MINTER_SERVICE_ACCOUNT, namespace),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: MINTER_SERVICE_ACCOUNT.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: MINTER_SERVICE_ACCOUNT.into(),
            namespace: Some(namespace.into()),
            ..Default::default()
        }]),
    }
}

/// The host Secret `<cp>-system/kubeconfig-minter`: the trusted CA bundle and the minter token,
/// with the token's lifetime in the same annotations as the admin kubeconfig's. No key material.
pub fn minter_secret(
    plan: &TenantPlan,
    ca_pem: &str,
    token: &str,
    issued_at: &str,
    expires_at: &str,
) -> Secret {
    token_secret(
        plan,
        MINTER_SECRET,
        BTreeMap::from([
            (MINTER_CA_KEY.to_string(), ca_pem.into()),
            (MINTER_TOKEN_KEY.to_string(), token.into()),
        ]),
        issued_at,
        expires_at,
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    use crate::build::pods::tests::plan;

    fn tenant_metadata() -> serde_json::Value {
        json!({
            "name": "hostplane-kubeconfig-minter",
            "namespace": "kube-system",
            "labels": {"app.kubernetes.io/managed-by": "hostplane"},
        })
    }

    #[test]
    fn the_minter_account_is_a_plain_service_account() {
        assert_eq!(
            serde_json::to_value(minter_service_account("kube-system")).unwrap(),
            json!({
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": tenant_metadata(),
            })
        );
    }

    #[test]
    fn the_minter_may_only_request_tokens_for_the_handed_out_account() {
        assert_eq!(
            serde_json::to_value(minter_role("kube-system", "hostplane-admin")).unwrap(),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": tenant_metadata(),
                "rules": [{
                    "apiGroups": [""],
                    "resources": ["serviceaccounts/token"],
                    "resourceNames": ["hostplane-admin"],
                    "verbs": ["create"],
                }],
            })
        );
        assert_eq!(
            serde_json::to_value(minter_role_binding("kube-system")).unwrap(),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": tenant_metadata(),
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "hostplane-kubeconfig-minter",
                },
                "subjects": [{
                    "kind": "ServiceAccount",
                    "name": "hostplane-kubeconfig-minter",
                    "namespace": "kube-system",
                }],
            })
        );
    }

    #[test]
    fn the_minter_secret_holds_only_the_cas_and_the_token() {
        let secret = minter_secret(
            &plan(),
            "CA",
            "T",
            "2026-01-01T00:00:00Z",
            "2026-01-01T01:00:00Z",
        );
        assert_eq!(
            serde_json::to_value(secret).unwrap(),
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": "kubeconfig-minter", "namespace": "acme-system",
                    "labels": {"app.kubernetes.io/managed-by": "hostplane", "tenancy.hostplane.io/controlplane": "acme"},
                    "annotations": {
                        "tenancy.hostplane.io/token-issued-at": "2026-01-01T00:00:00Z",
                        "tenancy.hostplane.io/token-expires-at": "2026-01-01T01:00:00Z"
                    },
                    "ownerReferences": [{
                        "apiVersion": "tenancy.hostplane.io/v1alpha1", "kind": "ControlPlane", "name": "acme",
                        "uid": "u-1", "controller": true, "blockOwnerDeletion": true
                    }]
                },
                "type": "Opaque",
                "data": {"ca.crt": "Q0E=", "token": "VA=="}
            })
        );
    }
}
