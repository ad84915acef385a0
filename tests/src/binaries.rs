//! Where the upstream programs the harness starts live on this machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Paths of the pinned upstream components built by `tools/upstream/build`.
///
/// Found once per test process: from `HOSTPLANE_BIN_DIR` (a directory holding the binaries by
/// component name) when set, otherwise from `tools/upstream/build --print`. A missing binary is a
/// panic that says how to build it, never a silently skipped test.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kubectl: PathBuf,
    pub kine: PathBuf,
    pub etcd: PathBuf,
    pub etcdctl: PathBuf,
    /// helm, for the chart's tests (not a tenant component).
    pub helm: PathBuf,
    /// Kubernetes version of the kube-* binaries, e.g. "1.37.2" (no leading `v`).
    pub kube_version: String,
}

const COMPONENTS: [&str; 8] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kine",
    "etcd",
    "etcdctl",
    "helm",
];

const BUILD_HINT: &str = "run `tools/upstream/build` in the repository (it builds the pinned \
     upstream components into ~/.cache/hostplane/bin), or point HOSTPLANE_BIN_DIR at a directory \
     holding them";

impl Binaries {
    /// The binaries for this test process, located on first use.
    pub fn get() -> &'static Binaries {
        static BINARIES: OnceLock<Binaries> = OnceLock::new();
        BINARIES.get_or_init(|| match std::env::var_os("HOSTPLANE_BIN_DIR") {
            Some(dir) => Self::from_dir(Path::new(&dir)),
            None => Self::from_build_script(),
        })
    }

    fn from_dir(dir: &Path) -> Binaries {
        let found: Vec<(String, PathBuf)> = COMPONENTS
            .iter()
            .map(|name| (name.to_string(), dir.join(name)))
            .collect();
        let binaries = Self::assemble(&found, None);
        let kube_version = version_from_flag(&binaries.kube_apiserver);
        Binaries {
            kube_version,
            ..binaries
        }
    }

    fn from_build_script() -> Binaries {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/upstream/build");
        let output = Command::new(&script)
            .arg("--print")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {BUILD_HINT}", script.display()));
        assert!(
            output.status.success(),
            "`{} --print` failed ({}): {}\n{BUILD_HINT}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        // Lines are "name version path"; the first line of a component is its default version.
        let mut found: Vec<(String, PathBuf)> = Vec::new();
        let mut kube_version = None;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let mut fields = line.split_whitespace();
            let (Some(name), Some(version), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if found.iter().any(|(n, _)| n == name) {
                continue;
            }
            if name == "kube-apiserver" {
                kube_version = Some(version.to_string());
            }
            found.push((name.to_string(), PathBuf::from(path)));
        }
        Self::assemble(&found, kube_version)
    }

    /// Checks that every component is present and builds the struct.
    fn assemble(found: &[(String, PathBuf)], kube_version: Option<String>) -> Binaries {
        let path_of = |name: &str| found.iter().find(|(n, _)| n == name).map(|(_, p)| p);
        let missing: Vec<String> = COMPONENTS
            .iter()
            .filter_map(|name| match path_of(name) {
                Some(path) if path.is_file() => None,
                Some(path) => Some(format!("{name} (expected at {})", path.display())),
                None => Some(format!("{name} (not listed by the build script)")),
            })
            .collect();
        assert!(
            missing.is_empty(),
            "upstream binaries missing: {}.\nTo fix: {BUILD_HINT}",
            missing.join(", ")
        );
        let path = |name: &str| path_of(name).cloned().unwrap_or_default();
        Binaries {
            kube_apiserver: path("kube-apiserver"),
            kube_controller_manager: path("kube-controller-manager"),
            kube_scheduler: path("kube-scheduler"),
            kubectl: path("kubectl"),
            kine: path("kine"),
            etcd: path("etcd"),
            etcdctl: path("etcdctl"),
            helm: path("helm"),
            kube_version: kube_version.unwrap_or_default(),
        }
    }
}

/// "Kubernetes v1.37.2" from `kube-apiserver --version` → "1.37.2".
fn version_from_flag(binary: &Path) -> String {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --version: {e}", binary.display()));
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .find_map(|word| word.strip_prefix('v'))
        .map(str::to_string)
        .unwrap_or_else(|| {
            panic!(
                "cannot read a version from `{} --version`: {text:?}",
                binary.display()
            )
        })
}

/// The `bin` directory of the newest PostgreSQL under `/usr/lib/postgresql/*/bin` (Debian's
/// layout), holding initdb, postgres, pg_isready and psql.
pub fn postgres_bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new("/usr/lib/postgresql");
        let newest = std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let major: u32 = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("postgres").is_file().then_some((major, bin))
            })
            .max_by_key(|(major, _)| *major);
        match newest {
            Some((_, bin)) => bin,
            None => panic!(
                "no PostgreSQL server found under {}/*/bin: apt-get install postgresql",
                root.display()
            ),
        }
    })
}

/// The `kubevirt-check` program built by `tools/kubevirt-check/build` (KubeVirt's own
/// VirtualMachine type and CRD), or `HOSTPLANE_KUBEVIRT_CHECK` when set.
pub fn kubevirt_check() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        const HINT: &str = "run `tools/kubevirt-check/build` in the repository (or scripts/deps)";
        let path = match std::env::var_os("HOSTPLANE_KUBEVIRT_CHECK") {
            Some(path) => PathBuf::from(path),
            None => {
                let script =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/kubevirt-check/build");
                let output = Command::new(&script)
                    .arg("--print")
                    .output()
                    .unwrap_or_else(|e| panic!("cannot run {}: {e}; {HINT}", script.display()));
                assert!(
                    output.status.success(),
                    "`{} --print` failed: {}; {HINT}",
                    script.display(),
                    String::from_utf8_lossy(&output.stderr)
                );
                PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
            }
        };
        assert!(
            path.is_file(),
            "kubevirt-check missing at {}: {HINT}",
            path.display()
        );
        path
    })
}
