//! Step 3: pure functions from a validated plan to desired objects, files and process specs.
//! No I/O here; tests compare whole outputs.

pub mod join;
pub mod kubeconfig;
pub mod minter;
pub mod objects;
pub mod pods;
pub mod pods_etcd;
pub mod processes;
pub mod tenant_limits;
