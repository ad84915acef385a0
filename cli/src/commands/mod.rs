pub mod controller;
pub mod manage;
pub mod proxy;
pub mod up;
pub mod usage;

use std::path::PathBuf;
use std::time::Instant;

use hostplane_controller::upstream::{UpstreamCatalog, default_upstream_root};

pub fn version(upstream_bin_dir: Option<PathBuf>) -> anyhow::Result<()> {
    println!("hostplane {}", env!("CARGO_PKG_VERSION"));
    let root = upstream_bin_dir.unwrap_or_else(default_upstream_root);
    match UpstreamCatalog::scan(&root) {
        Ok(catalog) => {
            for minor in catalog.minors() {
                let r = catalog.release(Some(&minor)).expect("listed minor");
                println!(
                    "kubernetes {} (kube-apiserver {})",
                    r.version,
                    r.kube_apiserver.display()
                );
            }
            let newest = catalog.release(None).expect("non-empty catalog");
            println!("kine {}", newest.kine.display());
            println!("etcd {}", newest.etcd.display());
        }
        Err(e) => println!("upstream binaries: {e}"),
    }
    Ok(())
}

/// Progress lines for long CLI work, with the time since the command started.
pub struct Progress {
    started: Instant,
}

impl Progress {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
        }
    }

    pub fn say(&self, what: &str) {
        eprintln!("[{:>6.1}s] {what}", self.started.elapsed().as_secs_f64());
    }
}
