//! hostplane hooks (see DESIGN.md, "Hooks"): PostCreateHook templates rendered into the
//! objects to apply for a tenant, and the hooks hostplane ships.

pub mod builtin;
pub mod render;

pub use builtin::{
    BOOTSTRAP_TOKEN_VAR, CA_CERT_HASH_VAR, JOIN_ENDPOINT_VAR, KUBEVIRT_NODES, MAX_NODE_COUNT,
    NODE_COUNT_VAR, NODE_INDEX_VAR, builtin_hook, builtin_hooks, render_hook_per_node,
};
pub use render::{
    CONTROL_PLANE_NAME_VAR, HOOK_NAME_VAR, HookUse, NAMESPACE_VAR, RenderError, hook_uses,
    is_cluster_scoped, place_in_namespace, render_hook, variables,
};
