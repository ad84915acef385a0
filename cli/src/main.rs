//! `hostplane`: one binary for the controller, the embedded default (`up`) and the everyday
//! commands people use instead of YAML.

mod commands;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// hostplane hosts virtual Kubernetes control planes: every ControlPlane object becomes an
/// isolated tenant API server with its own certificates, datastore and expiring kubeconfigs.
#[derive(Parser, Debug)]
#[command(name = "hostplane", version, propagate_version = true)]
struct Cli {
    /// Log filter, e.g. `info` or `hostplane_controller=debug,kube=info`.
    #[arg(
        long,
        global = true,
        env = "HOSTPLANE_LOG",
        default_value = "info,kube_client::client::builder=off"
    )]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start everything locally: a host API server (Kine on SQLite), the controller with the
    /// processes runtime, and a sample tenant you can kubectl into. Runs until Ctrl-C.
    Up(Box<commands::up::UpArgs>),
    /// Run the controller against the host cluster of the current kubeconfig.
    Controller(Box<commands::controller::ControllerArgs>),
    /// Serve every tenant on one TLS port, routed by SNI (NAME.DOMAIN), TLS passed through.
    Proxy(commands::proxy::ProxyArgs),
    /// Create a ControlPlane (and wait until it is Ready).
    Create(commands::manage::CreateArgs),
    /// Delete a ControlPlane (and wait until it is gone).
    Delete(commands::manage::DeleteArgs),
    /// List ControlPlanes with their state and endpoint.
    List(commands::manage::ListArgs),
    /// Print or write a tenant's kubeconfig (expiring token), or merge it into ~/.kube/config.
    Kubeconfig(commands::manage::KubeconfigArgs),
    /// Show what tenants use (CPU, memory, storage, objects, API requests), as the controller
    /// last sampled it.
    Usage(commands::usage::UsageArgs),
    /// Print the hostplane version and the upstream Kubernetes versions it can run.
    Version {
        /// Where tools/upstream/build put the upstream binaries.
        #[arg(long, env = "HOSTPLANE_UPSTREAM_BIN")]
        upstream_bin_dir: Option<PathBuf>,
    },
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    let result = match cli.command {
        Command::Up(args) => commands::up::run(*args).await,
        Command::Controller(args) => commands::controller::run(*args).await,
        Command::Proxy(args) => commands::proxy::run(args).await,
        Command::Create(args) => commands::manage::create(args).await,
        Command::Delete(args) => commands::manage::delete(args).await,
        Command::List(args) => commands::manage::list(args).await,
        Command::Kubeconfig(args) => commands::manage::kubeconfig(args).await,
        Command::Usage(args) => commands::usage::run(args).await,
        Command::Version { upstream_bin_dir } => commands::version(upstream_bin_dir),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand's arguments are consistent (clap checks these only when a command runs).
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
