//! The embedded host of `hostplane up`: a host kube-apiserver (on Kine/SQLite) and
//! kube-controller-manager run by the same builders and runtime as tenants, plus the CRDs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::config::KubeConfigOptions;

use crate::build::kubeconfig::{self, Credential};
use crate::build::processes::{BundleInput, Store, control_plane_bundle};
use crate::pki::{self, PkiFiles, PkiRequest};
use crate::provision::tenant_access;
use crate::runtime::processes::ProcessRuntime;
use crate::upstream::ReleaseBinaries;

const HOST_KEY: &str = "host";

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("host state in {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("host certificates: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("host processes: {0}")]
    Runtime(#[from] crate::runtime::processes::RuntimeError),
    #[error("host API server: {0}")]
    Client(String),
    #[error("the host API server did not become ready within {0:?}; see its log in {1}")]
    Timeout(Duration, PathBuf),
    #[error("installing CRDs: {0}")]
    Crds(kube::Error),
    #[error("the CRDs are established but API discovery does not serve {0} yet after {1:?}")]
    CrdsNotDiscovered(String, Duration),
}

/// A running embedded host.
pub struct EmbeddedHost {
    pub runtime: ProcessRuntime,
    pub kubeconfig_path: PathBuf,
    pub client: kube::Client,
    pub endpoint: String,
}

fn read_pki(dir: &Path) -> PkiFiles {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            Some((
                e.file_name().to_str()?.to_string(),
                std::fs::read_to_string(e.path()).ok()?,
            ))
        })
        .collect()
}

impl EmbeddedHost {
    /// Starts (or adopts) the host processes under `state_dir/host` and waits until the host
    /// API server is ready; `progress` is told what is being waited for.
    pub async fn start(
        state_dir: &Path,
        release: &ReleaseBinaries,
        progress: impl Fn(&str),
    ) -> Result<Self, EmbeddedError> {
        let runtime = ProcessRuntime::new(state_dir);
        let dir = runtime.tenant_dir(HOST_KEY);
        let existing = read_pki(&dir.join("pki"));
        let request = PkiRequest {
            cluster_name: "host".into(),
            apiserver_sans: vec![],
            ca_validity: Duration::from_secs(10 * 365 * 24 * 3600),
            leaf_validity: Duration::from_secs(365 * 24 * 3600),
        };
        let pki = pki::ensure_pki(&existing, &request, SystemTime::now())?;
        let ports = runtime.ports(HOST_KEY)?;
        let bundle = control_plane_bundle(&BundleInput {
            name: "host",
            dir: &dir,
            release,
            ports,
            pki: &pki,
            store: &Store::Sqlite,
            workers: false,
            limits: None,
        });
        progress("starting host Kine, kube-apiserver and kube-controller-manager");
        runtime.ensure(HOST_KEY, &bundle).await?;

        let endpoint = format!("https://127.0.0.1:{}", ports.apiserver);
        let get = |k: &str| pki.get(k).map(String::as_str).unwrap_or_default();
        let config = kubeconfig::kubeconfig(
            "hostplane",
            &endpoint,
            get("ca.crt"),
            "hostplane-admin",
            &Credential::ClientCert {
                cert_pem: get("admin.crt"),
                key_pem: get("admin.key"),
            },
        );
        let kubeconfig_path = state_dir.join("host.kubeconfig");
        std::fs::write(&kubeconfig_path, kubeconfig::to_yaml(&config)).map_err(|source| {
            EmbeddedError::State {
                path: kubeconfig_path.clone(),
                source,
            }
        })?;
        let client_config =
            kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
                .await
                .map_err(|e| EmbeddedError::Client(e.to_string()))?;
        let client = kube::Client::try_from(client_config)
            .map_err(|e| EmbeddedError::Client(e.to_string()))?;

        progress("waiting for the host API server to be ready");
        let timeout = Duration::from_secs(180);
        let started = Instant::now();
        while tenant_access::check_ready(&client).await.is_err() {
            if started.elapsed() > timeout {
                return Err(EmbeddedError::Timeout(timeout, dir.join("logs")));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        runtime.mark_api_ready(HOST_KEY);
        Ok(Self {
            runtime,
            kubeconfig_path,
            client,
            endpoint,
        })
    }

    /// Stops the host processes, keeping their state for the next `hostplane up`.
    pub async fn stop(&self) {
        self.runtime.stop(HOST_KEY).await;
    }
}

/// Installs the CRDs (waiting until they are served) and the built-in PostCreateHooks.
pub async fn install_crds(client: &kube::Client) -> Result<(), EmbeddedError> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let pp = PatchParams::apply("hostplane-crds").force();
    for crd in hostplane_crds::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &pp, &Patch::Apply(&crd))
            .await
            .map_err(EmbeddedError::Crds)?;
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        let _ = tokio::time::timeout(Duration::from_secs(60), established).await;
    }
    wait_discovered(client, Duration::from_secs(60)).await?;
    // The hooks hostplane ships (what the Helm chart installs in a real host cluster).
    let hooks = Api::<hostplane_crds::PostCreateHook>::all(client.clone());
    for hook in hostplane_hooks::builtin_hooks() {
        let name = hook.metadata.name.clone().unwrap_or_default();
        hooks
            .patch(&name, &pp, &Patch::Apply(&hook))
            .await
            .map_err(EmbeddedError::Crds)?;
    }
    Ok(())
}

/// Waits until API discovery serves every hostplane kind.
async fn wait_discovered(client: &kube::Client, patience: Duration) -> Result<(), EmbeddedError> {
    let kinds: Vec<String> = hostplane_crds::crds()
        .into_iter()
        .map(|crd| crd.spec.names.kind)
        .collect();
    let kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
    wait_kinds_served(client, hostplane_crds::GROUP, &kinds, patience).await
}

/// Waits until API discovery serves `kinds` of `group`. A CRD is Established before the
/// aggregated discovery document lists it, and kubectl maps kinds through discovery: applying an
/// object in between fails with "no matches for kind". Discovery lists only Established CRDs, so
/// this also waits for Established (without kubectl wait's race, which fails on a CRD whose
/// `status.conditions` is still null).
pub async fn wait_kinds_served(
    client: &kube::Client,
    group: &str,
    kinds: &[&str],
    patience: Duration,
) -> Result<(), EmbeddedError> {
    let deadline = Instant::now() + patience;
    loop {
        let served: Vec<String> = match kube::discovery::oneshot::group(client, group).await {
            Ok(group) => group
                .recommended_resources()
                .into_iter()
                .map(|(resource, _)| resource.kind)
                .collect(),
            Err(_) => Vec::new(),
        };
        let missing: Vec<&str> = kinds
            .iter()
            .copied()
            .filter(|kind| !served.iter().any(|s| s == kind))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(EmbeddedError::CrdsNotDiscovered(
                format!("{group}: {}", missing.join(", ")),
                patience,
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Labels of everything `hostplane up` creates by itself.
pub fn sample_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "app.kubernetes.io/created-by".to_string(),
        "hostplane-up".to_string(),
    )])
}
