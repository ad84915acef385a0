//! `PostCreateHook`: objects to create in a tenant's `<cp>-system` namespace once it exists,
//! written as Go text/template (KubeFlex's shape).

use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tenancy.hostplane.io",
    version = "v1alpha1",
    kind = "PostCreateHook",
    plural = "postcreatehooks",
    shortname = "pch",
    shortname = "pchs",
    category = "hostplane",
    derive = "PartialEq",
    doc = "Objects created for every ControlPlane that names this hook, rendered as Go templates.",
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PostCreateHookSpec {
    /// Kubernetes objects whose string values may hold `{{.Var}}` placeholders.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "embedded_objects")]
    pub templates: Vec<serde_json::Value>,

    /// Values for variables the ControlPlane does not set (lowest precedence).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new("self.all(v, self.exists_one(w, w.name == v.name))").message(
        "defaultVars names must be unique"
    ))]
    pub default_vars: Vec<Var>,

    /// Seconds this hook's Jobs may take to complete after its objects are applied before the
    /// hook is Failed; unset: the controller's default (`--hook-timeout-seconds`, 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: Option<i64>,
}

/// A named template variable.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Var {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// Templates are whole Kubernetes objects: keep every field (pruning would drop them).
fn embedded_objects(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "x-kubernetes-embedded-resource": true,
            "x-kubernetes-preserve-unknown-fields": true
        }
    })
}
