//! The processes a tenant control plane runs (Kine, kube-apiserver, kube-controller-manager) and
//! the files they read, as pure data. The processes runtime writes the files and supervises the
//! processes; the same flags are what the pods runtime puts in its containers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::build::kubeconfig::{self, Credential};
use crate::limits::TenantLimits;
use crate::pki::PkiFiles;
use crate::upstream::ReleaseBinaries;

/// Loopback ports a tenant's processes listen on; allocated once and kept in its state dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantPorts {
    pub kine: u16,
    pub apiserver: u16,
    pub controller_manager: u16,
    /// Client and peer ports of a dedicated etcd. Absent from `ports.json` files written before
    /// dedicated etcd existed: read as 0, then allocated by the runtime.
    #[serde(default)]
    pub etcd_client: u16,
    #[serde(default)]
    pub etcd_peer: u16,
}

/// Where the tenant API server keeps its data.
#[derive(Clone, Debug, PartialEq)]
pub enum Store {
    /// Kine on a SQLite file in the tenant's state dir (embedded default, no Postgres configured).
    Sqlite,
    /// Kine on a Postgres database: the tenant's own on the shared Postgres (as its own login
    /// role), or the user's.
    Postgres { url: String },
    /// An etcd of the tenant's own, run beside its API server, mTLS only, with the tenant's etcd
    /// CA and certificates (`etcd-*` and `apiserver-etcd-client.*` of the tenant PKI).
    DedicatedEtcd,
    /// The shared etcd, confined to the tenant's key prefix by an etcd user and role; the
    /// tenant PKI holds the shared etcd's CA (`etcd-ca.crt`) and the client certificate naming
    /// that user (`apiserver-etcd-client.*`).
    SharedEtcd {
        endpoints: Vec<String>,
        /// kube-apiserver's `--etcd-prefix`, such as `/hostplane/<uid hex>`.
        prefix: String,
    },
    /// The user's etcd, reached with the credentials of their Secret.
    ExternalEtcd {
        endpoints: Vec<String>,
        tls: EtcdClientTls,
    },
}

/// PEM client credentials for an etcd.
#[derive(Clone, Debug, PartialEq)]
pub struct EtcdClientTls {
    /// The CA that signed the etcd's serving certificate.
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
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
    /// CPU bandwidth of all the processes together, in millicores; `None` unlimited. Not part
    /// of the fingerprint: a new limit applies to the running processes.
    pub cpu_millicores: Option<u32>,
    /// Leaf pairs among `files` that are renewed in place: not part of the fingerprint.
    pub reloaded: Vec<ReloadedPair>,
}

impl ControlPlaneBundle {
    /// A digest of everything that defines the running processes: when it changes, they are
    /// restarted with the new files and flags; when it does not, running processes are adopted.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for (path, data) in &self.files {
            h.update(path.to_string_lossy().as_bytes());
            h.update([0]);
            // A renewed leaf restarts at most the process presenting it, when that would not
            // pick it up in time (`restarts_for_renewal`), never the whole tenant.
            if !self.reloaded.iter().any(|pair| pair.holds(path)) {
                h.update(data);
            }
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

    /// The processes to restart so that none presents an expired certificate: those whose pair
    /// differs between `on_disk` (what the state dir holds now) and this bundle, and which would
    /// re-read it only after the certificate they hold expires. Everything else that renews a
    /// leaf picks it up by itself.
    pub fn restarts_for_renewal(
        &self,
        on_disk: &BTreeMap<PathBuf, Vec<u8>>,
        now: SystemTime,
    ) -> BTreeSet<&'static str> {
        self.reloaded
            .iter()
            .filter_map(|pair| match pair.presented_by? {
                (process, Reload::Polled(period)) => Some((pair, process, period)),
                (_, Reload::AtOnce) => None,
            })
            .filter(|(_, process, _)| self.processes.iter().any(|p| p.name == *process))
            .filter(|(pair, _, _)| {
                let [crt, key] = pair.files();
                // Written for the first time: no process holds an older one.
                let renewed = |f: &PathBuf| match (on_disk.get(f), self.files.get(f)) {
                    (Some(old), Some(new)) => old != new,
                    _ => false,
                };
                renewed(&crt) || renewed(&key)
            })
            .filter(|(pair, _, period)| {
                let [crt, _] = pair.files();
                !picked_up_in_time(on_disk.get(&crt).map(Vec::as_slice), *period, now)
            })
            .map(|(_, process, _)| process)
            .collect()
    }
}

/// How a process picks up a renewed certificate and key from their files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    /// As soon as the files are replaced, while connections already open stay good past the
    /// old certificate's expiry. kube-apiserver watches its serving and front-proxy client
    /// pairs (apiserver `dynamiccertificates`: fsnotify, a poll every minute as a fallback).
    /// etcd reads its serving and peer pairs, and kube-apiserver's etcd client its client pair,
    /// on every TLS handshake (etcd `client/pkg/transport` `TLSInfo`: `GetCertificate`,
    /// `GetClientCertificate`); etcd checks a client certificate at the handshake only.
    AtOnce,
    /// client-go with a pair named by path (kubeconfigs, kube-apiserver's kubelet client): read
    /// on every new connection, but connections already open keep the old certificate until a
    /// poll every `period` (`transport.CertCallbackRefreshDuration`) finds the files changed and
    /// closes them. The API server checks a client certificate on every request, so an expired
    /// one fails requests on those connections until then.
    Polled(Duration),
}

/// client-go's `transport.CertCallbackRefreshDuration`.
pub const CLIENT_GO_CERT_POLL: Duration = Duration::from_secs(5 * 60);

/// Time to spare beyond a process's reload period: the controller writes renewed files a
/// little after they fall due, and a client takes a moment to reconnect.
pub const RELOAD_MARGIN: Duration = Duration::from_secs(30);

/// A leaf pair, `<stem>.crt` and `<stem>.key` in the state dir, renewed in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadedPair {
    pub stem: &'static str,
    /// The process presenting the certificate, and how it picks up a renewed one; `None` when
    /// none does (the controller's own `admin` pair, the kubelet client of a tenant without
    /// nodes, the scheduler's pair of a tenant without a scheduler).
    pub presented_by: Option<(&'static str, Reload)>,
}

impl ReloadedPair {
    /// `<stem>.crt` and `<stem>.key`.
    pub fn files(&self) -> [PathBuf; 2] {
        ["crt", "key"].map(|ext| PathBuf::from(format!("{}.{ext}", self.stem)))
    }

    fn holds(&self, path: &Path) -> bool {
        self.files().iter().any(|f| f == path)
    }
}

/// Whether a process that re-reads its certificate every `period` picks a renewed one up, with
/// `RELOAD_MARGIN` to spare, before the one it holds (`old_pem`, the file being replaced)
/// expires. A missing or unreadable old certificate is taken as expired.
pub fn picked_up_in_time(old_pem: Option<&[u8]>, period: Duration, now: SystemTime) -> bool {
    let left = old_pem
        .and_then(|pem| std::str::from_utf8(pem).ok())
        .and_then(|pem| crate::pki::seconds_left(pem, now).ok());
    left.is_some_and(|left| left > i128::from((period + RELOAD_MARGIN).as_secs()))
}

/// The tenant's leaf pairs renewed in place, and who presents each: what `fingerprint` leaves
/// out and `restarts_for_renewal` decides on. CAs are not among them: a new CA changes the
/// kubeconfigs' embedded CA data, and every process restarts with it.
fn reloaded_pairs(workers: bool) -> Vec<ReloadedPair> {
    let polled = Reload::Polled(CLIENT_GO_CERT_POLL);
    let pair = |stem, presented_by| ReloadedPair { stem, presented_by };
    vec![
        pair("pki/apiserver", Some(("kube-apiserver", Reload::AtOnce))),
        pair(
            "pki/front-proxy-client",
            Some(("kube-apiserver", Reload::AtOnce)),
        ),
        // kube-apiserver dials kubelets only for nodes' logs, exec and port-forward.
        pair(
            "pki/apiserver-kubelet-client",
            workers.then_some(("kube-apiserver", polled)),
        ),
        pair(
            "pki/apiserver-etcd-client",
            Some(("kube-apiserver", Reload::AtOnce)),
        ),
        pair(
            "pki/controller-manager",
            Some(("kube-controller-manager", polled)),
        ),
        pair(
            "pki/scheduler",
            workers.then_some(("kube-scheduler", polled)),
        ),
        pair("pki/etcd/server", Some(("etcd", Reload::AtOnce))),
        pair("pki/etcd/peer", Some(("etcd", Reload::AtOnce))),
        pair("pki/admin", None),
    ]
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
    pub store: &'a Store,
    /// The tenant has worker nodes: it runs kube-scheduler too.
    pub workers: bool,
    /// The tenant's limits (inflight flags, Kine's pool, etcd's quota); `None` for the embedded
    /// and test hosts, which run with the upstream defaults.
    pub limits: Option<&'a TenantLimits>,
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

/// Where a tenant PKI file lives in the state dir: kubeadm's layout, `pki/etcd/ca.crt` for the
/// Secret key `etcd-ca.crt` (Secret keys cannot hold a `/`), `pki/<key>` for the rest.
pub fn pki_file_path(key: &str) -> PathBuf {
    match key.strip_prefix("etcd-") {
        Some(file) => Path::new("pki/etcd").join(file),
        None => Path::new("pki").join(key),
    }
}

/// The user's etcd credentials, written into the state dir from their Secret.
const EXTERNAL_ETCD_FILES: [&str; 3] =
    ["datastore/ca.crt", "datastore/tls.crt", "datastore/tls.key"];

/// Settings of a dedicated etcd sized for one small tenant.
mod dedicated_etcd {
    /// kube-apiserver compacts every 5 minutes; this is the etcd's own backstop.
    pub const COMPACTION_RETENTION: &str = "10m";
    /// Without tenant limits (never for a tenant: see `TenantLimits::etcd_quota_backend_bytes`):
    /// 1 GiB, half etcd's default.
    pub const QUOTA_BACKEND_BYTES: &str = "1073741824";
    /// Raft entries kept in memory between snapshots (default 10000): fewer for a small tenant.
    pub const SNAPSHOT_COUNT: &str = "5000";
    /// Defragment at start when that frees at least this many MiB (a restart reclaims space).
    pub const BOOTSTRAP_DEFRAG_THRESHOLD_MB: &str = "64";
}

/// The datastore process the tenant runs (Kine or its dedicated etcd, none for a shared or
/// external etcd), the `--etcd-servers` its API server uses, and the API server's further
/// etcd client flags. Adds the files they need to `files`.
fn datastore_processes(
    input: &BundleInput<'_>,
    files: &mut BTreeMap<PathBuf, Vec<u8>>,
) -> (Option<ProcessSpec>, String, Vec<String>) {
    let dir = input.dir;
    let path = |rel: &str| dir.join(rel).to_string_lossy().into_owned();
    let pki = |key: &str| path(&pki_file_path(key).to_string_lossy());
    let tenant_pki_client_args = || {
        vec![
            format!("--etcd-cafile={}", pki("etcd-ca.crt")),
            format!("--etcd-certfile={}", pki("apiserver-etcd-client.crt")),
            format!("--etcd-keyfile={}", pki("apiserver-etcd-client.key")),
        ]
    };
    let kine = |endpoint: String, pool: Vec<String>| ProcessSpec {
        name: "kine",
        program: input.release.kine.clone(),
        args: [
            format!("--listen-address=127.0.0.1:{}", input.ports.kine),
            // Kine serves metrics on :8080 by default, which every tenant would fight over.
            "--metrics-bind-address=0".into(),
        ]
        .into_iter()
        .chain(pool)
        .collect(),
        env: vec![
            ("KINE_ENDPOINT".into(), endpoint),
            ("GOGC".into(), TENANT_GOGC.into()),
        ],
        after_api_ready: false,
    };
    let kine_url = format!("http://127.0.0.1:{}", input.ports.kine);
    match input.store {
        // Kine's own default SQLite options; `_txlock=immediate` matters most: without it the
        // pure-Go driver loses concurrent write transactions that Kine reports as committed.
        Store::Sqlite => (
            Some(kine(
                format!(
                    "sqlite://{}?_journal_mode=WAL&_busy_timeout=30000&_synchronous=NORMAL&_txlock=immediate",
                    dir.join("kine/state.db").display()
                ),
                vec![],
            )),
            kine_url,
            vec![],
        ),
        // The pool stays below the role's CONNECTION LIMIT (`TenantLimits::kine_pool`).
        Store::Postgres { url } => {
            let pool = input
                .limits
                .map(|l| l.kine_pool().args())
                .unwrap_or_default();
            (Some(kine(url.clone(), pool)), kine_url, vec![])
        }
        Store::DedicatedEtcd => {
            let client_url = format!("https://127.0.0.1:{}", input.ports.etcd_client);
            let peer_url = format!("https://127.0.0.1:{}", input.ports.etcd_peer);
            let etcd = ProcessSpec {
                name: "etcd",
                program: input.release.etcd.clone(),
                args: vec![
                    format!("--name={}", input.name),
                    // Inside the tenant's state dir: removed with it when the tenant is deleted.
                    format!("--data-dir={}", path("etcd")),
                    // https only, and only for clients with a certificate of the tenant's etcd
                    // CA: no plaintext port, and the tenant's own users (cluster CA) get nowhere.
                    format!("--listen-client-urls={client_url}"),
                    format!("--advertise-client-urls={client_url}"),
                    "--client-cert-auth=true".into(),
                    format!("--trusted-ca-file={}", pki("etcd-ca.crt")),
                    format!("--cert-file={}", pki("etcd-server.crt")),
                    format!("--key-file={}", pki("etcd-server.key")),
                    format!("--listen-peer-urls={peer_url}"),
                    format!("--initial-advertise-peer-urls={peer_url}"),
                    format!("--initial-cluster={}={peer_url}", input.name),
                    "--initial-cluster-state=new".into(),
                    "--peer-client-cert-auth=true".into(),
                    format!("--peer-trusted-ca-file={}", pki("etcd-ca.crt")),
                    format!("--peer-cert-file={}", pki("etcd-peer.crt")),
                    format!("--peer-key-file={}", pki("etcd-peer.key")),
                    "--auto-compaction-mode=periodic".into(),
                    format!(
                        "--auto-compaction-retention={}",
                        dedicated_etcd::COMPACTION_RETENTION
                    ),
                    format!(
                        "--quota-backend-bytes={}",
                        input
                            .limits
                            .map_or(dedicated_etcd::QUOTA_BACKEND_BYTES.to_string(), |l| l
                                .etcd_quota_backend_bytes()
                                .to_string())
                    ),
                    format!("--snapshot-count={}", dedicated_etcd::SNAPSHOT_COUNT),
                    format!(
                        "--bootstrap-defrag-threshold-megabytes={}",
                        dedicated_etcd::BOOTSTRAP_DEFRAG_THRESHOLD_MB
                    ),
                ],
                env: vec![("GOGC".into(), TENANT_GOGC.into())],
                after_api_ready: false,
            };
            (Some(etcd), client_url, tenant_pki_client_args())
        }
        Store::SharedEtcd { endpoints, prefix } => {
            let mut args = tenant_pki_client_args();
            args.extend([
                format!("--etcd-prefix={prefix}"),
                // kube-apiserver records compactions under `compact_rev_key`, outside every
                // tenant's prefix, which the tenant's etcd role may not write: the shared etcd
                // compacts itself (--auto-compaction-*) instead.
                "--etcd-compaction-interval=0".into(),
            ]);
            (None, endpoints.join(","), args)
        }
        Store::ExternalEtcd { endpoints, tls } => {
            let [ca, cert, key] = EXTERNAL_ETCD_FILES;
            for (file, pem) in [
                (ca, &tls.ca_pem),
                (cert, &tls.cert_pem),
                (key, &tls.key_pem),
            ] {
                files.insert(PathBuf::from(file), pem.as_bytes().to_vec());
            }
            let args = vec![
                format!("--etcd-cafile={}", path(ca)),
                format!("--etcd-certfile={}", path(cert)),
                format!("--etcd-keyfile={}", path(key)),
            ];
            (None, endpoints.join(","), args)
        }
    }
}

pub fn control_plane_bundle(input: &BundleInput<'_>) -> ControlPlaneBundle {
    let dir = input.dir;
    let pki = |f: &str| dir.join("pki").join(f).to_string_lossy().into_owned();
    let mut files: BTreeMap<PathBuf, Vec<u8>> = input
        .pki
        .iter()
        .map(|(name, pem)| (pki_file_path(name), pem.as_bytes().to_vec()))
        .collect();

    let apiserver_url = format!("https://127.0.0.1:{}", input.ports.apiserver);
    // During a cluster CA rotation (`pki::rotation`) clients trust, and the API server accepts
    // client certificates from, the bundle of both CAs.
    let ca = crate::pki::rotation::trusted(input.pki).unwrap_or_default();
    let trust_file = match input.pki.contains_key(crate::pki::rotation::BUNDLE) {
        true => crate::pki::rotation::BUNDLE,
        false => "ca.crt",
    };
    // A component's kubeconfig, `<stem>.conf` in the tenant dir, naming its client certificate
    // `pki/<stem>.crt` by path (renewed leaves are picked up without a restart); returns its path.
    let mut component_kubeconfig = |stem: &str, user: &str| {
        let config = kubeconfig::kubeconfig(
            input.name,
            &apiserver_url,
            ca,
            user,
            &Credential::ClientCertFiles {
                cert: &pki(&format!("{stem}.crt")),
                key: &pki(&format!("{stem}.key")),
            },
        );
        let file = format!("{stem}.conf");
        files.insert(
            PathBuf::from(&file),
            kubeconfig::to_yaml(&config).into_bytes(),
        );
        dir.join(file).to_string_lossy().into_owned()
    };
    let kcm_conf = component_kubeconfig("controller-manager", "system:kube-controller-manager");
    let scheduler_conf = input
        .workers
        .then(|| component_kubeconfig("scheduler", "system:kube-scheduler"));

    let (datastore, etcd_servers, etcd_client_args) = datastore_processes(input, &mut files);
    let mut apiserver_args =
        kube_apiserver_args(&dir.join("pki"), input.ports.apiserver, &etcd_servers);
    apiserver_args.extend(etcd_client_args);
    apiserver_args.extend(
        input
            .limits
            .map(TenantLimits::apiserver_args)
            .unwrap_or_default(),
    );
    for arg in &mut apiserver_args {
        if arg.starts_with("--client-ca-file=") {
            *arg = format!("--client-ca-file={}", pki(trust_file));
        }
    }
    let apiserver = ProcessSpec {
        name: "kube-apiserver",
        program: input.release.kube_apiserver.clone(),
        args: apiserver_args,
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
            format!("--root-ca-file={}", pki(trust_file)),
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

    let mut processes: Vec<ProcessSpec> = datastore.into_iter().collect();
    processes.extend([apiserver, controller_manager]);
    // Pods need placing only when there are nodes to place them on.
    if let Some(conf) = scheduler_conf {
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
    ControlPlaneBundle {
        files,
        processes,
        cpu_millicores: input
            .limits
            .and_then(|l| l.max_cpu_millicores)
            .and_then(|m| u32::try_from(m).ok()),
        reloaded: reloaded_pairs(input.workers),
    }
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

    fn bundle(store: &Store) -> ControlPlaneBundle {
        bundle_with_workers(store, false)
    }

    fn bundle_with_workers(store: &Store, workers: bool) -> ControlPlaneBundle {
        control_plane_bundle(&BundleInput {
            name: "acme",
            dir: Path::new("/state/acme-1"),
            release: &release(),
            ports: TenantPorts {
                kine: 20001,
                apiserver: 20002,
                controller_manager: 20003,
                etcd_client: 20004,
                etcd_peer: 20005,
            },
            pki: &pki(),
            store,
            workers,
            limits: None,
        })
    }

    #[test]
    fn a_tenant_with_workers_runs_kube_scheduler_as_system_kube_scheduler() {
        let b = bundle_with_workers(&Store::Sqlite, true);
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
            !bundle(&Store::Sqlite)
                .files
                .contains_key(Path::new("scheduler.conf"))
        );
    }

    #[test]
    fn postgres_dsn_goes_to_kine_by_environment_not_argv() {
        let b = bundle(&Store::Postgres {
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
        let b = bundle(&Store::Sqlite);
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
        let b = bundle(&Store::Sqlite);
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
        let b = bundle(&Store::Sqlite);
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
        let a = bundle(&Store::Sqlite);
        assert_eq!(a.fingerprint(), bundle(&Store::Sqlite).fingerprint());
        let mut b = a.clone();
        b.files.insert("pki/ca.crt".into(), b"rotated".to_vec());
        assert_ne!(a.fingerprint(), b.fingerprint());
        let c = bundle(&Store::Postgres {
            url: "postgres://x".into(),
        });
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    /// The tenant PKI with the etcd files of a dedicated etcd.
    fn pki_with_etcd() -> PkiFiles {
        let mut files = pki();
        for f in [
            "etcd-ca.crt",
            "etcd-ca.key",
            "etcd-server.crt",
            "etcd-server.key",
            "etcd-peer.crt",
            "etcd-peer.key",
            "apiserver-etcd-client.crt",
            "apiserver-etcd-client.key",
        ] {
            files.insert(f.to_string(), format!("PEM of {f}"));
        }
        files
    }

    fn bundle_with_pki(store: &Store, pki: &PkiFiles) -> ControlPlaneBundle {
        control_plane_bundle(&BundleInput {
            name: "acme",
            dir: Path::new("/state/acme-1"),
            release: &release(),
            ports: TenantPorts {
                kine: 20001,
                apiserver: 20002,
                controller_manager: 20003,
                etcd_client: 20004,
                etcd_peer: 20005,
            },
            pki,
            store,
            workers: false,
            limits: None,
        })
    }

    /// The API server's flags after the common ones (`kube_apiserver_args`), and its etcd servers.
    fn apiserver_etcd_flags(b: &ControlPlaneBundle) -> (String, Vec<String>) {
        let api = b
            .processes
            .iter()
            .find(|p| p.name == "kube-apiserver")
            .unwrap();
        let common = kube_apiserver_args(Path::new("/state/acme-1/pki"), 20002, "X").len();
        let servers = api
            .args
            .iter()
            .find_map(|a| a.strip_prefix("--etcd-servers="))
            .unwrap()
            .to_string();
        (servers, api.args[common..].to_vec())
    }

    #[test]
    fn a_dedicated_etcd_runs_beside_the_api_server_mtls_only_in_the_state_dir() {
        let b = bundle_with_pki(&Store::DedicatedEtcd, &pki_with_etcd());
        let names: Vec<_> = b.processes.iter().map(|p| p.name).collect();
        assert_eq!(names, ["etcd", "kube-apiserver", "kube-controller-manager"]);
        assert_eq!(
            b.processes[0],
            ProcessSpec {
                name: "etcd",
                program: PathBuf::from("/bin/etcd"),
                args: [
                    "--name=acme",
                    "--data-dir=/state/acme-1/etcd",
                    "--listen-client-urls=https://127.0.0.1:20004",
                    "--advertise-client-urls=https://127.0.0.1:20004",
                    "--client-cert-auth=true",
                    "--trusted-ca-file=/state/acme-1/pki/etcd/ca.crt",
                    "--cert-file=/state/acme-1/pki/etcd/server.crt",
                    "--key-file=/state/acme-1/pki/etcd/server.key",
                    "--listen-peer-urls=https://127.0.0.1:20005",
                    "--initial-advertise-peer-urls=https://127.0.0.1:20005",
                    "--initial-cluster=acme=https://127.0.0.1:20005",
                    "--initial-cluster-state=new",
                    "--peer-client-cert-auth=true",
                    "--peer-trusted-ca-file=/state/acme-1/pki/etcd/ca.crt",
                    "--peer-cert-file=/state/acme-1/pki/etcd/peer.crt",
                    "--peer-key-file=/state/acme-1/pki/etcd/peer.key",
                    "--auto-compaction-mode=periodic",
                    "--auto-compaction-retention=10m",
                    "--quota-backend-bytes=1073741824",
                    "--snapshot-count=5000",
                    "--bootstrap-defrag-threshold-megabytes=64",
                ]
                .map(String::from)
                .to_vec(),
                env: vec![("GOGC".to_string(), "50".to_string())],
                after_api_ready: false,
            }
        );
        assert_eq!(
            apiserver_etcd_flags(&b),
            (
                "https://127.0.0.1:20004".to_string(),
                [
                    "--etcd-cafile=/state/acme-1/pki/etcd/ca.crt",
                    "--etcd-certfile=/state/acme-1/pki/apiserver-etcd-client.crt",
                    "--etcd-keyfile=/state/acme-1/pki/apiserver-etcd-client.key",
                ]
                .map(String::from)
                .to_vec()
            )
        );
        let files: Vec<_> = b
            .files
            .keys()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            files,
            [
                "controller-manager.conf",
                "pki/apiserver-etcd-client.crt",
                "pki/apiserver-etcd-client.key",
                "pki/ca.crt",
                "pki/ca.key",
                "pki/controller-manager.crt",
                "pki/controller-manager.key",
                "pki/etcd/ca.crt",
                "pki/etcd/ca.key",
                "pki/etcd/peer.crt",
                "pki/etcd/peer.key",
                "pki/etcd/server.crt",
                "pki/etcd/server.key",
                "pki/sa.key",
            ]
        );
    }

    #[test]
    fn a_shared_etcd_tenant_runs_no_datastore_and_stays_in_its_prefix() {
        let mut pki = pki();
        for f in [
            "etcd-ca.crt",
            "apiserver-etcd-client.crt",
            "apiserver-etcd-client.key",
        ] {
            pki.insert(f.to_string(), format!("PEM of {f}"));
        }
        let b = bundle_with_pki(
            &Store::SharedEtcd {
                endpoints: vec![
                    "https://127.0.0.1:2379".into(),
                    "https://127.0.0.1:2381".into(),
                ],
                prefix: "/hostplane/0f8e".into(),
            },
            &pki,
        );
        let names: Vec<_> = b.processes.iter().map(|p| p.name).collect();
        assert_eq!(names, ["kube-apiserver", "kube-controller-manager"]);
        assert_eq!(
            apiserver_etcd_flags(&b),
            (
                "https://127.0.0.1:2379,https://127.0.0.1:2381".to_string(),
                [
                    "--etcd-cafile=/state/acme-1/pki/etcd/ca.crt",
                    "--etcd-certfile=/state/acme-1/pki/apiserver-etcd-client.crt",
                    "--etcd-keyfile=/state/acme-1/pki/apiserver-etcd-client.key",
                    "--etcd-prefix=/hostplane/0f8e",
                    "--etcd-compaction-interval=0",
                ]
                .map(String::from)
                .to_vec()
            )
        );
    }

    #[test]
    fn an_external_etcd_is_reached_with_the_users_credentials_written_to_the_state_dir() {
        let b = bundle_with_pki(
            &Store::ExternalEtcd {
                endpoints: vec!["https://10.0.0.5:2379".into()],
                tls: EtcdClientTls {
                    ca_pem: "their CA".into(),
                    cert_pem: "their cert".into(),
                    key_pem: "their key".into(),
                },
            },
            &pki(),
        );
        let names: Vec<_> = b.processes.iter().map(|p| p.name).collect();
        assert_eq!(names, ["kube-apiserver", "kube-controller-manager"]);
        assert_eq!(
            apiserver_etcd_flags(&b),
            (
                "https://10.0.0.5:2379".to_string(),
                [
                    "--etcd-cafile=/state/acme-1/datastore/ca.crt",
                    "--etcd-certfile=/state/acme-1/datastore/tls.crt",
                    "--etcd-keyfile=/state/acme-1/datastore/tls.key",
                ]
                .map(String::from)
                .to_vec()
            )
        );
        let written: Vec<(String, String)> = b
            .files
            .iter()
            .filter(|(p, _)| p.starts_with("datastore"))
            .map(|(p, d)| {
                (
                    p.to_string_lossy().into_owned(),
                    String::from_utf8(d.clone()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            written,
            [
                ("datastore/ca.crt", "their CA"),
                ("datastore/tls.crt", "their cert"),
                ("datastore/tls.key", "their key"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    #[test]
    fn tenant_limits_set_the_inflight_flags_kines_pool_and_etcds_quota() {
        let limits = TenantLimits {
            max_storage_bytes: 2 << 20,
            max_requests_inflight: 50,
            max_mutating_requests_inflight: 25,
            max_datastore_connections: 8,
            statement_timeout_seconds: 60,
            max_cpu_millicores: Some(500),
        };
        let with_limits = |store: &Store, pki: &PkiFiles| {
            control_plane_bundle(&BundleInput {
                limits: Some(&limits),
                ..BundleInput {
                    name: "acme",
                    dir: Path::new("/state/acme-1"),
                    release: &release(),
                    ports: TenantPorts {
                        kine: 20001,
                        apiserver: 20002,
                        controller_manager: 20003,
                        etcd_client: 20004,
                        etcd_peer: 20005,
                    },
                    pki,
                    store,
                    workers: false,
                    limits: None,
                }
            })
        };
        let args = |b: &ControlPlaneBundle, name: &str| {
            b.processes
                .iter()
                .find(|p| p.name == name)
                .unwrap()
                .args
                .clone()
        };
        let postgres = with_limits(
            &Store::Postgres {
                url: "postgres://x".into(),
            },
            &pki(),
        );
        assert_eq!(
            args(&postgres, "kine"),
            [
                "--listen-address=127.0.0.1:20001",
                "--metrics-bind-address=0",
                "--datastore-max-open-connections=6",
                "--datastore-max-idle-connections=4",
            ]
        );
        assert_eq!(
            apiserver_etcd_flags(&postgres).1,
            [
                "--max-requests-inflight=50",
                "--max-mutating-requests-inflight=25"
            ]
        );
        // SQLite has no connections to limit.
        assert_eq!(
            args(&with_limits(&Store::Sqlite, &pki()), "kine"),
            [
                "--listen-address=127.0.0.1:20001",
                "--metrics-bind-address=0"
            ]
        );
        let etcd = with_limits(&Store::DedicatedEtcd, &pki_with_etcd());
        assert!(
            args(&etcd, "etcd").contains(&format!("--quota-backend-bytes={}", 66 << 20)),
            "{:?}",
            args(&etcd, "etcd")
        );
        assert_eq!(
            apiserver_etcd_flags(&etcd).1[3..],
            [
                "--max-requests-inflight=50",
                "--max-mutating-requests-inflight=25"
            ]
        );
    }

    #[test]
    fn ports_files_from_before_dedicated_etcd_still_read() {
        let old: TenantPorts =
            serde_json::from_str(r#"{"kine":1,"apiserver":2,"controller_manager":3}"#).unwrap();
        assert_eq!(
            old,
            TenantPorts {
                kine: 1,
                apiserver: 2,
                controller_manager: 3,
                etcd_client: 0,
                etcd_peer: 0,
            }
        );
    }
}

#[cfg(test)]
mod reload_tests {
    use super::*;
    use crate::pki::{PkiRequest, ensure_dedicated_etcd_pki, ensure_pki};

    const ISSUED: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn request(leaf_seconds: u64) -> PkiRequest {
        PkiRequest {
            cluster_name: "acme".into(),
            apiserver_sans: vec![],
            ca_validity: Duration::from_secs(3650 * 24 * 3600),
            leaf_validity: Duration::from_secs(leaf_seconds),
        }
    }

    /// The tenant PKI with a dedicated etcd's files, as issued (or renewed) at `now`.
    fn tenant_pki(existing: &PkiFiles, leaf_seconds: u64, now: SystemTime) -> PkiFiles {
        let req = request(leaf_seconds);
        let mut pki = ensure_pki(existing, &req, now).unwrap();
        pki.extend(ensure_dedicated_etcd_pki(existing, &req, now).unwrap());
        pki
    }

    fn tenant(pki: &PkiFiles, workers: bool) -> ControlPlaneBundle {
        let release = ReleaseBinaries {
            version: "1.37.2".into(),
            kube_apiserver: "/bin/kube-apiserver".into(),
            kube_controller_manager: "/bin/kube-controller-manager".into(),
            kube_scheduler: "/bin/kube-scheduler".into(),
            kine: "/bin/kine".into(),
            etcd: "/bin/etcd".into(),
        };
        control_plane_bundle(&BundleInput {
            name: "acme",
            dir: Path::new("/state/acme-1"),
            release: &release,
            ports: TenantPorts {
                kine: 20001,
                apiserver: 20002,
                controller_manager: 20003,
                etcd_client: 20004,
                etcd_peer: 20005,
            },
            pki,
            store: &Store::DedicatedEtcd,
            workers,
            limits: None,
        })
    }

    /// The PKI of a tenant issued at `ISSUED`, and the same renewed when it falls due.
    fn issued_and_renewed(leaf_seconds: u64) -> (PkiFiles, PkiFiles, SystemTime) {
        let old = tenant_pki(&PkiFiles::new(), leaf_seconds, at(ISSUED));
        let due = crate::pki::next_renewal(&old).unwrap();
        let renewed = tenant_pki(&old, leaf_seconds, due);
        (old, renewed, due)
    }

    #[test]
    fn renewed_leaves_etcds_included_change_no_fingerprint_but_a_new_ca_or_kubeconfig_does() {
        let (old, renewed, _) = issued_and_renewed(90);
        let (before, after) = (tenant(&old, true), tenant(&renewed, true));
        for leaf in [
            "pki/apiserver.crt",
            "pki/controller-manager.key",
            "pki/etcd/server.crt",
            "pki/etcd/peer.key",
            "pki/apiserver-etcd-client.crt",
        ] {
            assert_ne!(before.files[Path::new(leaf)], after.files[Path::new(leaf)]);
        }
        assert_eq!(before.fingerprint(), after.fingerprint());
        for file in ["pki/ca.crt", "pki/etcd/ca.crt", "controller-manager.conf"] {
            let mut other = before.clone();
            other.files.insert(file.into(), b"changed".to_vec());
            assert_ne!(before.fingerprint(), other.fingerprint(), "{file}");
        }
    }

    #[test]
    fn a_polled_certificate_is_picked_up_in_time_only_with_the_period_and_margin_left() {
        let crt = issue(600);
        let poll = CLIENT_GO_CERT_POLL;
        // 600 s left against a 300 s poll and a 30 s margin.
        assert!(picked_up_in_time(Some(crt.as_bytes()), poll, at(ISSUED)));
        assert!(picked_up_in_time(
            Some(crt.as_bytes()),
            poll,
            at(ISSUED + 269)
        ));
        assert!(!picked_up_in_time(
            Some(crt.as_bytes()),
            poll,
            at(ISSUED + 270)
        ));
        assert!(!picked_up_in_time(
            Some(crt.as_bytes()),
            poll,
            at(ISSUED + 900)
        ));
        // What cannot be read is taken as expired.
        assert!(!picked_up_in_time(None, poll, at(ISSUED)));
        assert!(!picked_up_in_time(Some(b"garbage"), poll, at(ISSUED)));
    }

    fn issue(seconds: u64) -> String {
        let pki = ensure_pki(&PkiFiles::new(), &request(seconds), at(ISSUED)).unwrap();
        pki["controller-manager.crt"].clone()
    }

    /// The renewed bundle's decision against the files of the one it replaces.
    fn restarts(
        old: &PkiFiles,
        renewed: &PkiFiles,
        workers: bool,
        now: SystemTime,
    ) -> Vec<&'static str> {
        let on_disk = tenant(old, workers).files;
        tenant(renewed, workers)
            .restarts_for_renewal(&on_disk, now)
            .into_iter()
            .collect()
    }

    #[test]
    fn short_leaves_restart_the_client_go_readers_and_nothing_else() {
        // 90 s leaves are renewed with 36 s left, far inside client-go's 5-minute poll.
        let (old, renewed, due) = issued_and_renewed(90);
        assert_eq!(
            restarts(&old, &renewed, false, due),
            ["kube-controller-manager"]
        );
        // With nodes, kube-apiserver presents its kubelet client pair, also through client-go.
        assert_eq!(
            restarts(&old, &renewed, true, due),
            [
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler"
            ]
        );
    }

    #[test]
    fn long_leaves_restart_nothing_unless_renewed_too_late() {
        // 830 s leaves (plus a 166 s backdate) are renewed with 332 s left, just above the
        // 5-minute poll and its 30 s margin; 825 s ones with 330 s left, not above.
        let (old, renewed, due) = issued_and_renewed(830);
        assert_eq!(restarts(&old, &renewed, true, due), Vec::<&str>::new());
        let (old, renewed, due) = issued_and_renewed(825);
        assert_eq!(
            restarts(&old, &renewed, false, due),
            ["kube-controller-manager"]
        );
        let year = 365 * 24 * 3600;
        let (old, renewed, due) = issued_and_renewed(year);
        assert_eq!(restarts(&old, &renewed, true, due), Vec::<&str>::new());
        // A controller that was down until the old certificates had expired.
        let late = at(ISSUED + year + 1);
        let renewed_late = tenant_pki(&old, year, late);
        assert_eq!(
            restarts(&old, &renewed_late, true, late),
            [
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler"
            ]
        );
    }

    #[test]
    fn unchanged_or_first_written_files_restart_nothing() {
        let (old, _, due) = issued_and_renewed(90);
        assert_eq!(restarts(&old, &old, true, due), Vec::<&str>::new());
        // A first start: no process holds an older certificate.
        let first = tenant(&old, true).restarts_for_renewal(&BTreeMap::new(), due);
        assert_eq!(first, BTreeSet::new());
    }

    #[test]
    fn controller_manager_reads_its_client_pair_by_path() {
        let config = kubeconfig::kubeconfig(
            "acme",
            "https://127.0.0.1:1",
            "CA",
            "system:kube-controller-manager",
            &Credential::ClientCertFiles {
                cert: "/s/pki/controller-manager.crt",
                key: "/s/pki/controller-manager.key",
            },
        );
        let yaml: serde_yaml::Value = serde_yaml::from_str(&kubeconfig::to_yaml(&config)).unwrap();
        assert_eq!(
            yaml["users"][0],
            serde_yaml::from_str::<serde_yaml::Value>(
                "name: system:kube-controller-manager\nuser:\n  client-certificate: /s/pki/controller-manager.crt\n  client-key: /s/pki/controller-manager.key\n"
            )
            .unwrap()
        );
    }
}
