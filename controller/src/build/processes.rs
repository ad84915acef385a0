//! The processes a tenant control plane runs (Kine, kube-apiserver, kube-controller-manager) and
//! the files they read, as pure data. The processes runtime writes the files and supervises the
//! processes; the same flags are what the pods runtime puts in its containers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::build::kubeconfig::{self, Credential};
use crate::pki::PkiFiles;
use crate::upstream::ReleaseBinaries;

/// Loopback ports a tenant's processes listen on; allocated once and kept in its state dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantPorts {
    pub kine: u16,
    pub apiserver: u16,
    pub controller_manager: u16,
}

/// Where Kine keeps the tenant's data.
#[derive(Clone, Debug, PartialEq)]
pub enum KineStore {
    /// A SQLite file in the tenant's state dir (embedded default, no Postgres configured).
    Sqlite,
    /// The tenant's own database on the shared Postgres, as its own login role.
    Postgres { url: String },
}

/// One process to run: what the runtime starts, checks and restarts.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessSpec {
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Environment: secrets (such as a DSN) go here rather than on the command line, where any
    /// local user could read them from /proc.
    pub env: Vec<(String, String)>,
    /// Started only once the tenant API server is ready. kube-controller-manager exits until
    /// RBAC is bootstrapped; started early it crash-loops and takes CPU from the API server
    /// just when that is starting.
    pub after_api_ready: bool,
}

/// Everything a tenant's processes need: files relative to its state dir, and the processes.
#[derive(Clone, Debug, PartialEq)]
pub struct ControlPlaneBundle {
    pub files: BTreeMap<PathBuf, Vec<u8>>,
    pub processes: Vec<ProcessSpec>,
}

impl ControlPlaneBundle {
    /// A digest of everything that defines the running processes: when it changes, they are
    /// restarted with the new files and flags; when it does not, running processes are adopted.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for (path, data) in &self.files {
            h.update(path.to_string_lossy().as_bytes());
            h.update([0]);
            h.update(data);
            h.update([0]);
        }
        for p in &self.processes {
            h.update(p.name.as_bytes());
            h.update(p.program.to_string_lossy().as_bytes());
            for a in &p.args {
                h.update(a.as_bytes());
                h.update([0]);
            }
            for (k, v) in &p.env {
                h.update(k.as_bytes());
                h.update(v.as_bytes());
            }
        }
        hex::encode(h.finalize())
    }
}

/// Inputs of a tenant control plane's processes.
#[derive(Clone, Debug)]
pub struct BundleInput<'a> {
    pub name: &'a str,
    /// Absolute state dir of the tenant; file arguments point inside it.
    pub dir: &'a Path,
    pub release: &'a ReleaseBinaries,
    pub ports: TenantPorts,
    pub pki: &'a PkiFiles,
    pub store: &'a KineStore,
    /// The tenant has worker nodes: it runs kube-scheduler too.
    pub workers: bool,
}

/// Go's GC target for tenant processes: collecting at 50% heap growth instead of 100% cuts an
/// idle kube-apiserver's RSS by about 50 MiB (measured: 287 → 237 MiB) for a little more CPU;
/// below that the savings flatten out (25: 218 MiB) while GC work keeps growing.
pub const TENANT_GOGC: &str = "50";

/// The tenant's service network (never routed on the host: the tenant has no nodes by default).
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/12";

/// kube-apiserver flags of a tenant (and of the embedded and test hosts): loopback serving,
/// RBAC+Node authorization, service-account keys, front proxy, bootstrap tokens. `pki_dir`
/// holds the kubeadm-named files of `pki::ensure_pki`.
pub fn kube_apiserver_args(pki_dir: &Path, secure_port: u16, etcd_servers: &str) -> Vec<String> {
    let pki = |f: &str| pki_dir.join(f).to_string_lossy().into_owned();
    vec![
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={secure_port}"),
        format!("--etcd-servers={etcd_servers}"),
        format!("--tls-cert-file={}", pki("apiserver.crt")),
        format!("--tls-private-key-file={}", pki("apiserver.key")),
        format!("--client-ca-file={}", pki("ca.crt")),
        format!(
            "--kubelet-client-certificate={}",
            pki("apiserver-kubelet-client.crt")
        ),
        format!(
            "--kubelet-client-key={}",
            pki("apiserver-kubelet-client.key")
        ),
        "--service-account-issuer=https://kubernetes.default.svc".into(),
        format!("--service-account-key-file={}", pki("sa.pub")),
        format!("--service-account-signing-key-file={}", pki("sa.key")),
        format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
        "--authorization-mode=Node,RBAC".into(),
        "--enable-bootstrap-token-auth=true".into(),
        "--enable-admission-plugins=NodeRestriction".into(),
        "--allow-privileged=true".into(),
        format!(
            "--requestheader-client-ca-file={}",
            pki("front-proxy-ca.crt")
        ),
        format!("--proxy-client-cert-file={}", pki("front-proxy-client.crt")),
        format!("--proxy-client-key-file={}", pki("front-proxy-client.key")),
        "--requestheader-allowed-names=front-proxy-client".into(),
        "--requestheader-username-headers=X-Remote-User".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        // The `kubernetes` Service would point at a loopback address, which kube-apiserver
        // 1.37 refuses; tenants without nodes need no endpoints.
        "--endpoint-reconciler-type=none".into(),
        "--profiling=false".into(),
    ]
}

pub fn control_plane_bundle(input: &BundleInput<'_>) -> ControlPlaneBundle {
    let dir = input.dir;
    let pki = |f: &str| dir.join("pki").join(f).to_string_lossy().into_owned();
    let mut files: BTreeMap<PathBuf, Vec<u8>> = input
        .pki
        .iter()
        .map(|(name, pem)| (Path::new("pki").join(name), pem.as_bytes().to_vec()))
        .collect();

    let apiserver_url = format!("https://127.0.0.1:{}", input.ports.apiserver);
    let ca = input
        .pki
        .get("ca.crt")
        .map(String::as_str)
        .unwrap_or_default();
    let kcm_config = kubeconfig::kubeconfig(
        input.name,
        &apiserver_url,
        ca,
        "system:kube-controller-manager",
        &Credential::ClientCert {
            cert_pem: input
                .pki
                .get("controller-manager.crt")
                .map(String::as_str)
                .unwrap_or_default(),
            key_pem: input
                .pki
                .get("controller-manager.key")
                .map(String::as_str)
                .unwrap_or_default(),
        },
    );
    files.insert(
        PathBuf::from("controller-manager.conf"),
        kubeconfig::to_yaml(&kcm_config).into_bytes(),
    );
    let kcm_conf = dir
        .join("controller-manager.conf")
        .to_string_lossy()
        .into_owned();

    let kine_endpoint = match input.store {
        // Kine's own default SQLite options; `_txlock=immediate` matters most: without it the
        // pure-Go driver loses concurrent write transactions that Kine reports as committed.
        KineStore::Sqlite => format!(
            "sqlite://{}?_journal_mode=WAL&_busy_timeout=30000&_synchronous=NORMAL&_txlock=immediate",
            dir.join("kine/state.db").display()
        ),
        KineStore::Postgres { url } => url.clone(),
    };
    let kine = ProcessSpec {
        name: "kine",
        program: input.release.kine.clone(),
        args: vec![
            format!("--listen-address=127.0.0.1:{}", input.ports.kine),
            // Kine serves metrics on :8080 by default, which every tenant would fight over.
            "--metrics-bind-address=0".into(),
        ],
        env: vec![
            ("KINE_ENDPOINT".into(), kine_endpoint),
            ("GOGC".into(), TENANT_GOGC.into()),
        ],
        after_api_ready: false,
    };

    let apiserver = ProcessSpec {
        name: "kube-apiserver",
        program: input.release.kube_apiserver.clone(),
        args: kube_apiserver_args(
            &dir.join("pki"),
            input.ports.apiserver,
            &format!("http://127.0.0.1:{}", input.ports.kine),
        ),
        env: vec![("GOGC".into(), TENANT_GOGC.into())],
        after_api_ready: false,
    };

    let controller_manager = ProcessSpec {
        name: "kube-controller-manager",
        program: input.release.kube_controller_manager.clone(),
        args: vec![
            format!("--kubeconfig={kcm_conf}"),
            format!("--authentication-kubeconfig={kcm_conf}"),
            format!("--authorization-kubeconfig={kcm_conf}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", input.ports.controller_manager),
            format!("--cluster-name={}", input.name),
            // The tenant CA signs CSRs, so kubelets joining with bootstrap tokens get certificates.
            format!("--cluster-signing-cert-file={}", pki("ca.crt")),
            format!("--cluster-signing-key-file={}", pki("ca.key")),
            format!("--root-ca-file={}", pki("ca.crt")),
            format!("--service-account-private-key-file={}", pki("sa.key")),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            "--use-service-account-credentials=true".into(),
            "--controllers=*,bootstrapsigner,tokencleaner".into(),
            // One instance per tenant: no lease traffic against the datastore.
            "--leader-elect=false".into(),
            "--profiling=false".into(),
        ],
        env: vec![("GOGC".into(), TENANT_GOGC.into())],
        after_api_ready: true,
    };

    let mut processes = vec![kine, apiserver, controller_manager];
    if input.workers {
        // Pods need placing only when there are nodes to place them on.
        let scheduler_config = kubeconfig::kubeconfig(
            input.name,
            &apiserver_url,
            ca,
            "system:kube-scheduler",
            &Credential::ClientCert {
                cert_pem: input
                    .pki
                    .get("scheduler.crt")
                    .map(String::as_str)
                    .unwrap_or_default(),
                key_pem: input
                    .pki
                    .get("scheduler.key")
                    .map(String::as_str)
                    .unwrap_or_default(),
            },
        );
        files.insert(
            PathBuf::from("scheduler.conf"),
            kubeconfig::to_yaml(&scheduler_config).into_bytes(),
        );
        let conf = dir.join("scheduler.conf").to_string_lossy().into_owned();
        processes.push(ProcessSpec {
            name: "kube-scheduler",
            program: input.release.kube_scheduler.clone(),
            args: vec![
                format!("--kubeconfig={conf}"),
                format!("--authentication-kubeconfig={conf}"),
                format!("--authorization-kubeconfig={conf}"),
                // Nothing scrapes a tenant scheduler's health: no port to allocate.
                "--secure-port=0".into(),
                "--leader-elect=false".into(),
                "--profiling=false".into(),
            ],
            env: vec![("GOGC".into(), TENANT_GOGC.into())],
            after_api_ready: true,
        });
    }
    ControlPlaneBundle { files, processes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release() -> ReleaseBinaries {
        ReleaseBinaries {
            version: "1.37.2".into(),
            kube_apiserver: "/bin/kube-apiserver".into(),
            kube_controller_manager: "/bin/kube-controller-manager".into(),
            kube_scheduler: "/bin/kube-scheduler".into(),
            kine: "/bin/kine".into(),
            etcd: "/bin/etcd".into(),
        }
    }

    fn pki() -> PkiFiles {
        [
            "ca.crt",
            "ca.key",
            "controller-manager.crt",
            "controller-manager.key",
            "sa.key",
        ]
        .iter()
        .map(|f| (f.to_string(), format!("PEM of {f}")))
        .collect()
    }

    fn bundle(store: &KineStore) -> ControlPlaneBundle {
        bundle_with_workers(store, false)
    }

    fn bundle_with_workers(store: &KineStore, workers: bool) -> ControlPlaneBundle {
        control_plane_bundle(&BundleInput {
            name: "acme",
            dir: Path::new("/state/acme-1"),
            release: &release(),
            ports: TenantPorts {
                kine: 20001,
                apiserver: 20002,
                controller_manager: 20003,
            },
            pki: &pki(),
            store,
            workers,
        })
    }

    #[test]
    fn a_tenant_with_workers_runs_kube_scheduler_as_system_kube_scheduler() {
        let b = bundle_with_workers(&KineStore::Sqlite, true);
        let scheduler = b.processes.last().unwrap();
        assert_eq!(
            (
                scheduler.name,
                scheduler.program.clone(),
                scheduler.args.clone(),
                scheduler.after_api_ready
            ),
            (
                "kube-scheduler",
                PathBuf::from("/bin/kube-scheduler"),
                vec![
                    "--kubeconfig=/state/acme-1/scheduler.conf".to_string(),
                    "--authentication-kubeconfig=/state/acme-1/scheduler.conf".to_string(),
                    "--authorization-kubeconfig=/state/acme-1/scheduler.conf".to_string(),
                    "--secure-port=0".to_string(),
                    "--leader-elect=false".to_string(),
                    "--profiling=false".to_string(),
                ],
                true
            )
        );
        let conf = String::from_utf8(b.files[Path::new("scheduler.conf")].clone()).unwrap();
        assert!(conf.contains("system:kube-scheduler"), "{conf}");
        assert!(
            !bundle(&KineStore::Sqlite)
                .files
                .contains_key(Path::new("scheduler.conf"))
        );
    }

    #[test]
    fn postgres_dsn_goes_to_kine_by_environment_not_argv() {
        let b = bundle(&KineStore::Postgres {
            url: "postgres://hp_x:secret@127.0.0.1:5432/hp_x".into(),
        });
        let kine = &b.processes[0];
        assert_eq!(
            (
                kine.name,
                kine.program.clone(),
                kine.args.clone(),
                kine.env.clone()
            ),
            (
                "kine",
                PathBuf::from("/bin/kine"),
                vec![
                    "--listen-address=127.0.0.1:20001".to_string(),
                    "--metrics-bind-address=0".to_string()
                ],
                vec![
                    (
                        "KINE_ENDPOINT".to_string(),
                        "postgres://hp_x:secret@127.0.0.1:5432/hp_x".to_string()
                    ),
                    ("GOGC".to_string(), "50".to_string())
                ]
            )
        );
        assert!(
            b.processes
                .iter()
                .all(|p| p.args.iter().all(|a| !a.contains("secret")))
        );
    }

    #[test]
    fn sqlite_store_lives_in_the_state_dir() {
        let b = bundle(&KineStore::Sqlite);
        assert_eq!(
            b.processes[0].env,
            vec![
                (
                    "KINE_ENDPOINT".to_string(),
                    "sqlite:///state/acme-1/kine/state.db?_journal_mode=WAL&_busy_timeout=30000&_synchronous=NORMAL&_txlock=immediate".to_string()
                ),
                ("GOGC".to_string(), "50".to_string())
            ]
        );
    }

    #[test]
    fn apiserver_and_controller_manager_flags() {
        let b = bundle(&KineStore::Sqlite);
        let names: Vec<_> = b.processes.iter().map(|p| p.name).collect();
        assert_eq!(names, ["kine", "kube-apiserver", "kube-controller-manager"]);
        let api = &b.processes[1].args;
        for expected in [
            "--secure-port=20002",
            "--etcd-servers=http://127.0.0.1:20001",
            "--client-ca-file=/state/acme-1/pki/ca.crt",
            "--service-account-signing-key-file=/state/acme-1/pki/sa.key",
            "--authorization-mode=Node,RBAC",
            "--enable-bootstrap-token-auth=true",
            "--requestheader-client-ca-file=/state/acme-1/pki/front-proxy-ca.crt",
        ] {
            assert!(
                api.contains(&expected.to_string()),
                "apiserver lacks {expected}: {api:?}"
            );
        }
        let kcm = &b.processes[2].args;
        for expected in [
            "--kubeconfig=/state/acme-1/controller-manager.conf",
            "--cluster-signing-cert-file=/state/acme-1/pki/ca.crt",
            "--cluster-signing-key-file=/state/acme-1/pki/ca.key",
            "--controllers=*,bootstrapsigner,tokencleaner",
            "--secure-port=20003",
        ] {
            assert!(
                kcm.contains(&expected.to_string()),
                "controller-manager lacks {expected}: {kcm:?}"
            );
        }
    }

    #[test]
    fn files_are_the_pki_and_the_controller_manager_kubeconfig() {
        let b = bundle(&KineStore::Sqlite);
        let names: Vec<_> = b
            .files
            .keys()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "controller-manager.conf",
                "pki/ca.crt",
                "pki/ca.key",
                "pki/controller-manager.crt",
                "pki/controller-manager.key",
                "pki/sa.key"
            ]
        );
        let conf: serde_yaml::Value =
            serde_yaml::from_slice(&b.files[Path::new("controller-manager.conf")]).unwrap();
        assert_eq!(
            conf["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:20002"
        );
        assert_eq!(conf["users"][0]["name"], "system:kube-controller-manager");
    }

    #[test]
    fn fingerprint_changes_with_files_and_flags_only() {
        let a = bundle(&KineStore::Sqlite);
        assert_eq!(a.fingerprint(), bundle(&KineStore::Sqlite).fingerprint());
        let mut b = a.clone();
        b.files.insert("pki/ca.crt".into(), b"rotated".to_vec());
        assert_ne!(a.fingerprint(), b.fingerprint());
        let c = bundle(&KineStore::Postgres {
            url: "postgres://x".into(),
        });
        assert_ne!(a.fingerprint(), c.fingerprint());
    }
}
