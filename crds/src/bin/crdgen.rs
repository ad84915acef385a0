//! Writes the CRD YAML generated from the Rust types to `crds/crds.yaml` and to the Helm chart,
//! and copies the built-in PostCreateHooks the controller compiles in (`hooks/builtin/`) into the
//! chart, or checks that the committed files match (`--check`, for CI).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Built-in hooks the chart installs, as paths under `hooks/builtin/` and
/// `charts/hostplane/files/`: one source, so the chart cannot drift from the binary.
const BUILTIN_HOOK_FILES: [&str; 1] = ["kubevirt-nodes.yaml"];

/// Every generated file with the text it must hold.
fn targets() -> Result<Vec<(PathBuf, String)>, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let yaml = hostplane_crds::crds_yaml();
    let mut targets = vec![
        (root.join("crds/crds.yaml"), yaml.clone()),
        (root.join("charts/hostplane/crds/crds.yaml"), yaml),
    ];
    for file in BUILTIN_HOOK_FILES {
        let source = root.join("hooks/builtin").join(file);
        let text = std::fs::read_to_string(&source)
            .map_err(|e| format!("cannot read {}: {e}", source.display()))?;
        targets.push((root.join("charts/hostplane/files").join(file), text));
    }
    Ok(targets)
}

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let targets = match targets() {
        Ok(targets) => targets,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stale = false;
    for (path, yaml) in targets {
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == yaml {
            continue;
        }
        if check {
            eprintln!(
                "{} differs from its source: run `cargo run -p hostplane-crds --bin crdgen`",
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
