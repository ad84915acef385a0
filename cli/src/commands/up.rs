//! `hostplane up`: the embedded default on one machine.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use hostplane_controller::embedded::{self, EmbeddedHost};
use hostplane_controller::reconcile::{self, Context};
use hostplane_controller::upstream::UpstreamCatalog;
use hostplane_crds::{ControlPlane, ControlPlaneSpec};
use kube::api::{Api, Patch, PatchParams};

use super::Progress;
use super::controller::{ControllerOptions, serve_metrics, shutdown_signal};
use super::manage::{fetch_kubeconfig, wait_ready};

#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub options: ControllerOptions,
    /// Name of the sample tenant created on start.
    #[arg(long, default_value = "sample")]
    pub sample: String,
    /// Do not create a sample tenant.
    #[arg(long)]
    pub no_sample: bool,
    /// Exit once the sample tenant is Ready and its kubeconfig written (tenants are stopped).
    #[arg(long)]
    pub exit_when_ready: bool,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let progress = Progress::new();
    let mut config = args.options.config()?;
    let catalog =
        UpstreamCatalog::scan(&config.upstream_root).context("finding upstream binaries")?;
    let release = catalog
        .release(None)
        .expect("a scanned catalog has a release")
        .clone();
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;

    let host = EmbeddedHost::start(&config.state_dir, &release, |what| progress.say(what)).await?;
    progress.say(&format!(
        "host API server ready at {} (Kubernetes {})",
        host.endpoint, release.version
    ));
    embedded::install_crds(&host.client).await?;
    progress.say(
        "CRDs installed: controlplanes.tenancy.hostplane.io, postcreatehooks.tenancy.hostplane.io",
    );

    // What `type: host` ControlPlanes hand out: the embedded host, as its admin kubeconfig names it.
    let host_config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&host.kubeconfig_path)
            .context("reading the embedded host's kubeconfig")?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .context("reading the embedded host's kubeconfig")?;
    config.host_access = hostplane_controller::provision::adopted::host_access(
        &host_config,
        args.options.host_server_url.as_deref(),
    );
    let ctx = Arc::new(
        Context::new(host.client.clone(), config.clone()).map_err(|e| anyhow::anyhow!(e))?,
    );
    serve_metrics(&args.options, &ctx).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(reconcile::run(ctx.clone(), async move {
        let _ = stop_rx.await;
    }));
    progress.say(&format!(
        "controller running (processes runtime, state in {}, datastore {})",
        config.state_dir.display(),
        if config.postgres_dsn.is_some() {
            "shared Postgres"
        } else {
            "Kine on SQLite"
        }
    ));

    let kubeconfig = host.kubeconfig_path.display().to_string();
    let mut outcome = Ok(());
    if !args.no_sample {
        outcome = create_sample(&host, &args.sample, &config.state_dir, &progress).await;
    }
    if outcome.is_ok() {
        println!();
        println!("hostplane is up. In another terminal:");
        println!("  export KUBECONFIG={kubeconfig}");
        println!("  kubectl get controlplanes");
        if !args.no_sample {
            let tenant = config.state_dir.join(format!("{}.kubeconfig", args.sample));
            println!("  kubectl --kubeconfig {} get ns", tenant.display());
        }
        println!("  hostplane create acme && hostplane kubeconfig acme > acme.kubeconfig");
        if !args.exit_when_ready {
            println!("Press Ctrl-C to stop (tenant state is kept for the next `hostplane up`).");
            shutdown_signal().await;
        }
    }
    progress.say("stopping controller and tenants");
    let _ = stop_tx.send(());
    let _ = controller.await;
    ctx.runtime.stop_all().await;
    host.stop().await;
    progress.say("stopped");
    outcome
}

async fn create_sample(
    host: &EmbeddedHost,
    name: &str,
    state_dir: &std::path::Path,
    progress: &Progress,
) -> anyhow::Result<()> {
    let api = Api::<ControlPlane>::all(host.client.clone());
    let mut cp = ControlPlane::new(
        name,
        ControlPlaneSpec {
            token_expiration_seconds: 7200,
            ..Default::default()
        },
    );
    cp.metadata.labels = Some(embedded::sample_labels());
    api.patch(
        name,
        &PatchParams::apply("hostplane-up"),
        &Patch::Apply(&cp),
    )
    .await
    .context("creating the sample ControlPlane")?;
    progress.say(&format!(
        "controlplane {name} applied; waiting for it to be Ready"
    ));
    wait_ready(&api, name, Duration::from_secs(300), progress).await?;
    let text = fetch_kubeconfig(host.client.clone(), name, false).await?;
    let path = state_dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, text)?;
    progress.say(&format!("tenant kubeconfig written to {}", path.display()));
    Ok(())
}
