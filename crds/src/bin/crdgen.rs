//! Writes the CRD YAML generated from the Rust types to `crds/crds.yaml` and to the Helm chart,
//! or checks that the committed files match (`--check`, for CI).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn targets() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    vec![
        root.join("crds/crds.yaml"),
        root.join("charts/hostplane/crds/crds.yaml"),
    ]
}

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let yaml = hostplane_crds::crds_yaml();
    let mut stale = false;
    for path in targets() {
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == yaml {
            continue;
        }
        if check {
            eprintln!(
                "{} differs from the types: run `cargo run -p hostplane-crds --bin crdgen`",
                path.display()
            );
            stale = true;
        } else if let Err(e) = std::fs::write(&path, &yaml) {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        } else {
            eprintln!("wrote {}", path.display());
        }
    }
    if stale {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
