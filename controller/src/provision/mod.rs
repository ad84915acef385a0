//! Step 4: idempotent `ensure_*` of state outside the host API (datastores, credentials inside
//! the tenant). Each result is recorded before anything relies on it.

pub mod adopted;
pub mod etcd;
pub mod etcd_quota;
pub mod hooks;
pub mod join;
pub mod postgres;
pub mod tenant_access;
