//! Tenant runtimes: where a tenant's control plane processes run.

pub mod pods;
pub mod processes;
