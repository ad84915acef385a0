//! `create`, `delete`, `list`, `kubeconfig`: ControlPlanes without writing YAML.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use hostplane_controller::download::{DownloadClientError, DownloadRequest};
use hostplane_crds::{BackendType, ControlPlane, ControlPlaneSpec, ControlPlaneType};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::config::Kubeconfig;
use secrecy::ExposeSecret;

use super::Progress;

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Name of the ControlPlane (its namespace on the host is NAME-system).
    pub name: String,
    /// Where the tenant's state lives: shared (Postgres via Kine, or SQLite), dedicated, external.
    #[arg(long, default_value = "shared")]
    pub backend: String,
    /// Tenant Kubernetes minor version, e.g. 1.37 (newest available when unset).
    #[arg(long = "kubernetes-version", value_name = "MINOR")]
    pub kubernetes_version: Option<String>,
    /// Lifetime of the tokens in handed-out kubeconfigs, in seconds (600 to 31536000).
    #[arg(long, default_value_t = hostplane_crds::DEFAULT_TOKEN_EXPIRATION_SECONDS)]
    pub token_expiration_seconds: i64,
    /// Return at once instead of waiting for Ready.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for Ready, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    pub name: String,
    /// Return at once instead of waiting until the tenant is torn down.
    #[arg(long)]
    pub no_wait: bool,
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct ListArgs {}

#[derive(Args, Debug)]
pub struct KubeconfigArgs {
    pub name: String,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Merge into ~/.kube/config (or $KUBECONFIG's first file) as context NAME.
    #[arg(long, conflicts_with = "output")]
    pub merge: bool,
    /// The in-cluster variant (for workloads running inside the host cluster).
    #[arg(long, conflicts_with = "url")]
    pub in_cluster: bool,
    /// Download a freshly minted kubeconfig from this endpoint (`hostplane proxy`'s
    /// https://HOST:PORT) instead of reading the tenant's Secret on the host.
    #[arg(long, env = "HOSTPLANE_DOWNLOAD_URL")]
    pub url: Option<String>,
    /// Host bearer token to present to --url (default: the token of the current context of
    /// the host kubeconfig). Only used with --url.
    #[arg(long, env = "HOSTPLANE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate to trust for --url (default: the system's roots).
    #[arg(long, requires = "url")]
    pub ca_file: Option<PathBuf>,
    /// Lifetime of the downloaded token in seconds (at least 600; capped at the
    /// ControlPlane's tokenExpirationSeconds, which is the default).
    #[arg(long, requires = "url")]
    pub ttl: Option<i64>,
}

fn backend(name: &str) -> anyhow::Result<BackendType> {
    Ok(match name {
        "shared" => BackendType::Shared,
        "dedicated" => BackendType::Dedicated,
        "external" => BackendType::External,
        other => bail!("unknown backend {other:?}: use shared, dedicated or external"),
    })
}

async fn host_client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default()
        .await
        .context("connecting to the host cluster (set KUBECONFIG; `hostplane up` prints it)")
}

fn condition(cp: &ControlPlane, type_: &str) -> Option<(String, String, String)> {
    cp.condition(type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits for Ready=True, printing each new reason; fails early on reasons that need a person.
pub async fn wait_ready(
    api: &Api<ControlPlane>,
    name: &str,
    timeout: Duration,
    progress: &Progress,
) -> anyhow::Result<ControlPlane> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        if let Some(cp) = api.get_opt(name).await?
            && let Some((status, reason, message)) = condition(&cp, "Ready")
        {
            if status == "True" {
                progress.say(&format!("{name} is Ready ({message})"));
                return Ok(cp);
            }
            let line = format!("{name}: {reason}: {message}");
            if line != last {
                progress.say(&line);
                last = line;
            }
            if matches!(
                reason.as_str(),
                "UnsupportedType" | "UnsupportedBackend" | "UnknownVersion"
            ) {
                bail!("{name} cannot become ready: {message}");
            }
        }
        if started.elapsed() > timeout {
            bail!("{name} is not Ready after {timeout:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let client = host_client().await?;
    let api = Api::<ControlPlane>::all(client);
    let spec = ControlPlaneSpec {
        type_: ControlPlaneType::K8s,
        backend: backend(&args.backend)?,
        version: args.kubernetes_version,
        token_expiration_seconds: args.token_expiration_seconds,
        ..Default::default()
    };
    let cp = ControlPlane::new(&args.name, spec);
    api.patch(
        &args.name,
        &PatchParams::apply("hostplane-cli").force(),
        &Patch::Apply(&cp),
    )
    .await
    .with_context(|| format!("creating ControlPlane {}", args.name))?;
    let progress = Progress::new();
    progress.say(&format!("controlplane {} applied", args.name));
    if !args.no_wait {
        wait_ready(
            &api,
            &args.name,
            Duration::from_secs(args.timeout),
            &progress,
        )
        .await?;
        println!(
            "hostplane kubeconfig {} > {}.kubeconfig",
            args.name, args.name
        );
    }
    Ok(())
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let api = Api::<ControlPlane>::all(host_client().await?);
    let progress = Progress::new();
    match api.delete(&args.name, &DeleteParams::default()).await {
        Ok(_) => progress.say(&format!("controlplane {} deletion requested", args.name)),
        Err(kube::Error::Api(s)) if s.code == 404 => bail!("controlplane {} not found", args.name),
        Err(e) => return Err(e.into()),
    }
    if args.no_wait {
        return Ok(());
    }
    let started = Instant::now();
    while api.get_opt(&args.name).await?.is_some() {
        if started.elapsed() > Duration::from_secs(args.timeout) {
            bail!(
                "controlplane {} still exists after {}s",
                args.name,
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    progress.say(&format!("controlplane {} deleted", args.name));
    Ok(())
}

pub async fn list(_args: ListArgs) -> anyhow::Result<()> {
    let api = Api::<ControlPlane>::all(host_client().await?);
    let cps = api.list(&Default::default()).await?;
    println!(
        "{:<24} {:<9} {:<10} {:<8} {:<7} {:<14} ENDPOINT",
        "NAME", "TYPE", "BACKEND", "VERSION", "READY", "REASON"
    );
    for cp in cps.items {
        let (ready, reason, _) =
            condition(&cp, "Ready").unwrap_or_else(|| ("Unknown".into(), "".into(), "".into()));
        let status = cp.status.clone().unwrap_or_default();
        println!(
            "{:<24} {:<9} {:<10} {:<8} {:<7} {:<14} {}",
            cp.metadata.name.as_deref().unwrap_or_default(),
            cp.spec.type_.as_str(),
            cp.spec.backend.as_str(),
            status.version.as_deref().unwrap_or("-"),
            ready,
            reason,
            status.endpoint.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}

/// The tenant's kubeconfig from its Secret on the host (what `status.secretRef` points at).
pub async fn fetch_kubeconfig(
    client: kube::Client,
    name: &str,
    in_cluster: bool,
) -> anyhow::Result<String> {
    let cp = Api::<ControlPlane>::all(client.clone())
        .get(name)
        .await
        .with_context(|| format!("controlplane {name}"))?;
    let Some(secret_ref) = cp.status.and_then(|s| s.secret_ref) else {
        bail!("controlplane {name} has no kubeconfig yet (is it Ready? `hostplane list`)");
    };
    let secret = Api::<Secret>::namespaced(client, &secret_ref.namespace)
        .get(&secret_ref.name)
        .await?;
    let key = if in_cluster {
        &secret_ref.in_cluster_key
    } else {
        &secret_ref.key
    };
    let data = secret
        .data
        .and_then(|d| d.get(key).cloned())
        .with_context(|| format!("Secret {} has no key {key}", secret_ref.name))?;
    Ok(String::from_utf8(data.0)?)
}

/// The bearer token of the current context of the host kubeconfig ($KUBECONFIG or
/// ~/.kube/config), for presenting to a download endpoint.
fn current_context_token() -> anyhow::Result<String> {
    let config = Kubeconfig::read().context("reading the host kubeconfig")?;
    let context_name = config
        .current_context
        .clone()
        .context("the host kubeconfig has no current context; pass --token")?;
    let user = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .and_then(|c| c.user.clone())
        .with_context(|| format!("context {context_name} names no user; pass --token"))?;
    let auth = config
        .auth_infos
        .iter()
        .find(|a| a.name == user)
        .and_then(|a| a.auth_info.as_ref())
        .with_context(|| format!("user {user} is not in the host kubeconfig; pass --token"))?;
    if let Some(token) = &auth.token {
        return Ok(token.expose_secret().to_string());
    }
    if let Some(file) = &auth.token_file {
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("reading the token file {file} of user {user}"))?;
        return Ok(token.trim().to_string());
    }
    bail!(
        "user {user} of the current context has no bearer token (client certificates are not \
         accepted by the download endpoint); pass --token, e.g. from `kubectl create token`"
    )
}

/// The kubeconfig from a download endpoint.
async fn download_kubeconfig(args: &KubeconfigArgs, url: &str) -> anyhow::Result<String> {
    let token = match &args.token {
        Some(token) => token.clone(),
        None => current_context_token()?,
    };
    let request = DownloadRequest {
        url,
        name: &args.name,
        token: &token,
        ca_file: args.ca_file.as_deref(),
        ttl: args.ttl,
    };
    match hostplane_controller::download::download_kubeconfig(&request).await {
        Ok(text) => Ok(text),
        Err(DownloadClientError::Refused { status, body }) => bail!(
            "{url} refused the kubeconfig of {} ({status}): {}",
            args.name,
            body.trim()
        ),
        Err(e) => Err(e.into()),
    }
}

pub async fn kubeconfig(args: KubeconfigArgs) -> anyhow::Result<()> {
    let text = match &args.url {
        Some(url) => download_kubeconfig(&args, url).await?,
        None => fetch_kubeconfig(host_client().await?, &args.name, args.in_cluster).await?,
    };
    if args.merge {
        let path = std::env::var_os("KUBECONFIG")
            .and_then(|v| std::env::split_paths(&v).next())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube/config")))
            .context("no KUBECONFIG and no HOME")?;
        let tenant: Kubeconfig = serde_yaml::from_str(&text)?;
        let mut merged = if path.exists() {
            Kubeconfig::read_from(&path)?
        } else {
            Kubeconfig::default()
        };
        merged
            .clusters
            .retain(|c| !tenant.clusters.iter().any(|t| t.name == c.name));
        merged
            .auth_infos
            .retain(|c| !tenant.auth_infos.iter().any(|t| t.name == c.name));
        merged
            .contexts
            .retain(|c| !tenant.contexts.iter().any(|t| t.name == c.name));
        merged.clusters.extend(tenant.clusters);
        merged.auth_infos.extend(tenant.auth_infos);
        merged.contexts.extend(tenant.contexts);
        merged.api_version.get_or_insert_with(|| "v1".into());
        merged.kind.get_or_insert_with(|| "Config".into());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, serde_yaml::to_string(&merged)?)?;
        eprintln!(
            "merged context {0} into {1}; use it with: kubectl --context {0} get ns",
            args.name,
            path.display()
        );
    } else if let Some(path) = args.output {
        std::fs::write(&path, text)?;
        eprintln!(
            "wrote {}; use it with: kubectl --kubeconfig {} get ns",
            path.display(),
            path.display()
        );
    } else {
        print!("{text}");
    }
    Ok(())
}
