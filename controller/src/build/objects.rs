//! Host objects of a tenant: its `<cp>-system` namespace and the Secrets in it.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::validate::TenantPlan;

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "hostplane";
pub const CONTROLPLANE_LABEL: &str = "tenancy.hostplane.io/controlplane";

/// Secret with the tenant PKI, kubeadm key names.
pub const CERTS_SECRET: &str = "k8s-certs";
/// Secret with the kubeconfigs handed to people.
pub const KUBECONFIG_SECRET: &str = "admin-kubeconfig";
pub const KUBECONFIG_KEY: &str = "kubeconfig";
pub const KUBECONFIG_INCLUSTER_KEY: &str = "kubeconfig-incluster";
/// Secret with the tenant's datastore credentials.
pub const DATASTORE_SECRET: &str = "datastore";

/// Annotations recording the handed-out token's lifetime, so renewal needs no token parsing.
pub const TOKEN_ISSUED_AT: &str = "tenancy.hostplane.io/token-issued-at";
pub const TOKEN_EXPIRES_AT: &str = "tenancy.hostplane.io/token-expires-at";

fn labels(plan: &TenantPlan) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (CONTROLPLANE_LABEL.to_string(), plan.name.clone()),
    ])
}

/// Owner reference to the ControlPlane: the host's garbage collector removes what the
/// finalizer might miss.
pub fn owner_reference(plan: &TenantPlan) -> OwnerReference {
    OwnerReference {
        api_version: "tenancy.hostplane.io/v1alpha1".into(),
        kind: "ControlPlane".into(),
        name: plan.name.clone(),
        uid: plan.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn meta(plan: &TenantPlan, name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(labels(plan)),
        owner_references: Some(vec![owner_reference(plan)]),
        ..Default::default()
    }
}

pub fn system_namespace(plan: &TenantPlan) -> Namespace {
    Namespace {
        metadata: meta(plan, &plan.namespace, None),
        ..Default::default()
    }
}

fn secret(plan: &TenantPlan, name: &str, data: BTreeMap<String, Vec<u8>>) -> Secret {
    Secret {
        metadata: meta(plan, name, Some(&plan.namespace)),
        type_: Some("Opaque".into()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Default::default()
    }
}

pub fn certs_secret(plan: &TenantPlan, pki: &BTreeMap<String, String>) -> Secret {
    secret(
        plan,
        CERTS_SECRET,
        pki.iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
            .collect(),
    )
}

pub fn datastore_secret(plan: &TenantPlan, password: &str, url: &str) -> Secret {
    secret(
        plan,
        DATASTORE_SECRET,
        BTreeMap::from([
            ("password".to_string(), password.into()),
            ("url".to_string(), url.into()),
        ]),
    )
}

/// The kubeconfig Secret; `kubeconfig` is for people outside the host, `kubeconfig-incluster`
/// for workloads inside it (the same with the processes runtime, whose endpoint is loopback).
pub fn kubeconfig_secret(
    plan: &TenantPlan,
    kubeconfig: &str,
    incluster: &str,
    issued_at: &str,
    expires_at: &str,
) -> Secret {
    token_secret(
        plan,
        KUBECONFIG_SECRET,
        BTreeMap::from([
            (KUBECONFIG_KEY.to_string(), kubeconfig.into()),
            (KUBECONFIG_INCLUSTER_KEY.to_string(), incluster.into()),
        ]),
        issued_at,
        expires_at,
    )
}

/// A Secret of the tenant's namespace holding a token, annotated with when it was issued and
/// when it expires (what renewal reads back).
pub fn token_secret(
    plan: &TenantPlan,
    name: &str,
    data: BTreeMap<String, Vec<u8>>,
    issued_at: &str,
    expires_at: &str,
) -> Secret {
    let mut s = secret(plan, name, data);
    s.metadata.annotations = Some(BTreeMap::from([
        (TOKEN_ISSUED_AT.to_string(), issued_at.to_string()),
        (TOKEN_EXPIRES_AT.to_string(), expires_at.to_string()),
    ]));
    s
}

/// Reads a Secret's data as PEM/text entries (what `certs_secret` wrote).
pub fn secret_strings(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| String::from_utf8(v.0.clone()).ok().map(|s| (k.clone(), s)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::build::pods::tests::plan;

    #[test]
    fn namespace_is_labelled_and_owned() {
        let ns = serde_json::to_value(system_namespace(&plan())).unwrap();
        assert_eq!(
            ns,
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": "acme-system",
                    "labels": {"app.kubernetes.io/managed-by": "hostplane", "tenancy.hostplane.io/controlplane": "acme"},
                    "ownerReferences": [{
                        "apiVersion": "tenancy.hostplane.io/v1alpha1", "kind": "ControlPlane", "name": "acme",
                        "uid": "u-1", "controller": true, "blockOwnerDeletion": true
                    }]
                }
            })
        );
    }

    #[test]
    fn kubeconfig_secret_has_both_keys_and_token_times() {
        let s = serde_json::to_value(kubeconfig_secret(
            &plan(),
            "K",
            "I",
            "2026-01-01T00:00:00Z",
            "2026-01-01T02:00:00Z",
        ))
        .unwrap();
        assert_eq!(
            s,
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": "admin-kubeconfig", "namespace": "acme-system",
                    "labels": {"app.kubernetes.io/managed-by": "hostplane", "tenancy.hostplane.io/controlplane": "acme"},
                    "annotations": {
                        "tenancy.hostplane.io/token-issued-at": "2026-01-01T00:00:00Z",
                        "tenancy.hostplane.io/token-expires-at": "2026-01-01T02:00:00Z"
                    },
                    "ownerReferences": [{
                        "apiVersion": "tenancy.hostplane.io/v1alpha1", "kind": "ControlPlane", "name": "acme",
                        "uid": "u-1", "controller": true, "blockOwnerDeletion": true
                    }]
                },
                "type": "Opaque",
                "data": {"kubeconfig": "Sw==", "kubeconfig-incluster": "SQ=="}
            })
        );
    }

    #[test]
    fn certs_round_trip_through_the_secret() {
        let pki = BTreeMap::from([("ca.crt".to_string(), "PEM".to_string())]);
        assert_eq!(secret_strings(&certs_secret(&plan(), &pki)), pki);
    }
}
