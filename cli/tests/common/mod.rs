//! End-to-end helpers: the real `hostplane controller` and `hostplane proxy` binaries as child
//! processes (so tests can SIGKILL them), and small readers of what a user sees (conditions,
//! kubeconfigs, tokens, metrics, tenant processes).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use hostplane_crds::ControlPlane;
use hostplane_tests::{Binaries, KubeApiserver, http_get, start_apiserver_on_etcd};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

/// How long a new tenant may take to become Available on a busy test machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(240);

/// A `hostplane controller` process against a host API server.
pub struct ControllerProcess {
    child: Option<Child>,
    pub state_dir: PathBuf,
    kubeconfig: PathBuf,
    postgres_dsn: Option<String>,
    extra_env: Vec<(String, String)>,
    log: PathBuf,
}

impl ControllerProcess {
    pub fn start(
        host: &KubeApiserver,
        state_dir: &Path,
        postgres_dsn: Option<String>,
        extra_env: &[(&str, &str)],
    ) -> Self {
        Self::start_named("controller", host, state_dir, postgres_dsn, extra_env)
    }

    /// Like `start`, logging to `<state_dir>/<name>.log`, so that several controllers (leader
    /// and standbys) can share one state directory as replicas on one machine do.
    pub fn start_named(
        name: &str,
        host: &KubeApiserver,
        state_dir: &Path,
        postgres_dsn: Option<String>,
        extra_env: &[(&str, &str)],
    ) -> Self {
        let mut me = Self {
            child: None,
            state_dir: state_dir.to_path_buf(),
            kubeconfig: host.kubeconfig_path().to_path_buf(),
            postgres_dsn,
            extra_env: extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: state_dir.join(format!("{name}.log")),
        };
        me.spawn();
        me
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.state_dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hostplane"));
        cmd.arg("controller")
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOSTPLANE_STATE_DIR", &self.state_dir)
            .env("HOSTPLANE_LOG", "info,hostplane_controller=debug")
            .env_remove("HOSTPLANE_POSTGRES_DSN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(dsn) = &self.postgres_dsn {
            cmd.env("HOSTPLANE_POSTGRES_DSN", dsn);
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("hostplane binary runs"));
    }

    /// SIGKILL: a crash, leaving tenant processes behind to be adopted.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit (SIGKILL after that); the exit status
    /// when it exited by itself in time.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_ref()?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the controller to exit by itself (SIGKILL after that); the
    /// exit status when it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// True while the controller process runs (false once it exited, e.g. crashed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The state dirs of the tenants the controller runs (`<name>-<uid prefix>`).
    pub fn tenant_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.state_dir.join("tenants"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        dirs
    }

    /// Stops the controller and every tenant process it left (tests must not leak processes).
    pub fn stop_tenants(&self) {
        for pid in self.tenant_dirs().iter().flat_map(|dir| recorded_pids(dir)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// `<name>-<first uid group>`: a tenant's state dir under `<state dir>/tenants`.
pub fn tenant_key(cp: &ControlPlane) -> String {
    let uid = cp.metadata.uid.clone().unwrap();
    format!(
        "{}-{}",
        cp.metadata.name.clone().unwrap(),
        uid.split('-').next().unwrap()
    )
}

/// The pid in a tenant state dir's `<process>.pid`, if it has one.
pub fn pid_of(tenant_dir: &Path, process: &str) -> Option<i32> {
    std::fs::read_to_string(tenant_dir.join(format!("{process}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Alive and not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// The pids recorded in a tenant state dir's pid files (one per supervised process).
pub fn recorded_pids(tenant_dir: &Path) -> Vec<u32> {
    std::fs::read_dir(tenant_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|f| f.path().extension().is_some_and(|e| e == "pid"))
        .filter_map(|f| std::fs::read_to_string(f.path()).ok()?.trim().parse().ok())
        .collect()
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
        self.stop_tenants();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- hostplane controller log (last 60 lines) ----");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

pub fn condition(cp: &ControlPlane, type_: &str) -> Option<(String, String, String)> {
    cp.condition(type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the Ready condition has `status` (and, if given, `reason`); returns the object.
pub async fn wait_ready_state(
    api: &Api<ControlPlane>,
    name: &str,
    status: &str,
    reason: Option<&str>,
    timeout: Duration,
) -> ControlPlane {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(cp) = api.get(name).await {
            let c = condition(&cp, "Ready");
            if let Some((s, r, _)) = &c
                && s == status
                && reason.is_none_or(|want| want == r)
            {
                return cp;
            }
            last = c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: Ready never became {status}/{reason:?}; last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Claims of a JWT (no signature check: the tenant API server does that).
pub fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// The token inside a kubeconfig's first user.
pub fn kubeconfig_token(kubeconfig: &str) -> String {
    let v: serde_yaml::Value = serde_yaml::from_str(kubeconfig).unwrap();
    v["users"][0]["user"]["token"]
        .as_str()
        .expect("a token user")
        .to_string()
}

/// A key of a host Secret as text.
pub async fn secret_text(host: &kube::Client, namespace: &str, name: &str, key: &str) -> String {
    let secret = Api::<Secret>::namespaced(host.clone(), namespace)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("Secret {namespace}/{name}: {e}"));
    String::from_utf8(secret.data.unwrap()[key].0.clone()).unwrap()
}

/// A kubeconfig handed out for tenant `name`: `key` (`kubeconfig` through the tenant's
/// endpoint, `kubeconfig-incluster` straight to it) of `<name>-system/admin-kubeconfig`.
pub async fn handed_out_kubeconfig(host: &kube::Client, name: &str, key: &str) -> String {
    secret_text(host, &format!("{name}-system"), "admin-kubeconfig", key).await
}

/// The client configuration a handed-out kubeconfig gives (see `handed_out_kubeconfig`).
pub async fn tenant_client_config(host: &kube::Client, name: &str, key: &str) -> kube::Config {
    let text = handed_out_kubeconfig(host, name, key).await;
    kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&text).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap()
}

/// A client of tenant `name` as a person gets it from a handed-out kubeconfig.
pub async fn tenant_client(host: &kube::Client, name: &str, key: &str) -> kube::Client {
    kube::Client::try_from(tenant_client_config(host, name, key).await).unwrap()
}

/// The YAML of a ControlPlane of type `k8s`; `extra_spec` holds further spec lines, indented.
pub fn controlplane_yaml(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: {name}\nspec:\n  type: k8s\n{extra_spec}"
    )
}

/// The value of the series `series` (a metric name, with its labels if it has any) in
/// Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `GET /metrics` on a loopback port, as Prometheus scrapes it; the text, asserted served.
pub async fn scrape_metrics(port: u16) -> String {
    let (status, text) = http_get(port, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{text}");
    text
}

/// Runs kubectl with a kubeconfig file; returns (success, stdout+stderr).
pub fn kubectl_with(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A host API server on etcd with hostplane's CRDs installed.
pub async fn host_with_crds() -> KubeApiserver {
    let host = start_apiserver_on_etcd().await;
    hostplane_controller::embedded::install_crds(&host.client())
        .await
        .expect("CRDs install");
    host
}

/// A host API server on etcd with hostplane's CRDs, and a `hostplane controller` process watching
/// it (Kine on SQLite for its tenants unless a Postgres DSN is given).
pub struct ControllerBed {
    pub host: KubeApiserver,
    pub controller: ControllerProcess,
    _tmp: tempfile::TempDir,
}

impl ControllerBed {
    pub async fn with(postgres_dsn: Option<String>, extra_env: &[(&str, &str)]) -> Self {
        Self::on(start_apiserver_on_etcd().await, postgres_dsn, extra_env).await
    }

    pub async fn on(
        host: KubeApiserver,
        postgres_dsn: Option<String>,
        extra_env: &[(&str, &str)],
    ) -> Self {
        hostplane_controller::embedded::install_crds(&host.client())
            .await
            .expect("CRDs install");
        let tmp = tempfile::tempdir().unwrap();
        let controller = ControllerProcess::start(&host, tmp.path(), postgres_dsn, extra_env);
        Self {
            host,
            controller,
            _tmp: tmp,
        }
    }

    pub fn cps(&self) -> Api<ControlPlane> {
        Api::all(self.host.client())
    }

    /// kubectl against the host (with `stdin` piped in, if given); (success, stdout+stderr).
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let out = match stdin {
            Some(input) => self.host.run_kubectl_with_stdin(args, input),
            None => self.host.run_kubectl(args),
        };
        (out.success(), out.combined())
    }

    /// `kubectl apply` of YAML to the host, asserted to succeed.
    pub fn apply(&self, yaml: &str) {
        let (ok, out) = self.kubectl(&["apply", "-f", "-"], Some(yaml));
        assert!(ok, "kubectl apply failed: {out}");
    }

    /// Applies a `k8s` ControlPlane (see `controlplane_yaml`).
    pub fn apply_cp(&self, name: &str, extra_spec: &str) {
        self.apply(&controlplane_yaml(name, extra_spec));
    }

    /// `kubectl patch cp NAME --type=TYPE -p PATCH` on the host, asserted to succeed.
    pub fn patch_cp(&self, name: &str, patch_type: &str, patch: &str) {
        let patch_type = format!("--type={patch_type}");
        let (ok, out) = self.kubectl(&["patch", "cp", name, &patch_type, "-p", patch], None);
        assert!(ok, "patching {name}: {out}");
    }

    /// Waits up to `READY_TIMEOUT` for the ControlPlane to be Ready/Available.
    pub async fn available(&self, name: &str) -> ControlPlane {
        wait_ready_state(&self.cps(), name, "True", Some("Available"), READY_TIMEOUT).await
    }

    /// Applies a `k8s` ControlPlane and waits until it is Available.
    pub async fn create(&self, name: &str, extra_spec: &str) -> ControlPlane {
        self.apply_cp(name, extra_spec);
        self.available(name).await
    }

    /// The tenant's handed-out kubeconfig, written to `<state dir>/<name>.kubeconfig` as a user
    /// would; the path and the text.
    pub async fn tenant_kubeconfig(&self, name: &str) -> (PathBuf, String) {
        let text = handed_out_kubeconfig(&self.host.client(), name, "kubeconfig").await;
        let path = self.controller.state_dir.join(format!("{name}.kubeconfig"));
        std::fs::write(&path, &text).unwrap();
        (path, text)
    }

    /// kubectl against the tenant with its handed-out kubeconfig.
    pub async fn tenant_kubectl(&self, name: &str, args: &[&str]) -> (bool, String) {
        let (path, _) = self.tenant_kubeconfig(name).await;
        kubectl_with(&Binaries::get().kubectl, &path, args)
    }

    /// The tenant's state directory (processes runtime).
    pub fn tenant_dir(&self, cp: &ControlPlane) -> PathBuf {
        self.controller
            .state_dir
            .join("tenants")
            .join(tenant_key(cp))
    }
}

/// `hostplane proxy ARGS` against the host, its output in `log`; killed when dropped, its log
/// printed when a test fails.
pub struct ProxyProcess {
    child: Child,
    log: PathBuf,
}

impl ProxyProcess {
    pub fn start(host: &KubeApiserver, log: PathBuf, args: &[&str]) -> Self {
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hostplane"))
            .arg("proxy")
            .args(args)
            .env("KUBECONFIG", host.kubeconfig_path())
            .env_remove("HOSTPLANE_PROXY_ADDRESS")
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("hostplane binary runs");
        Self { child, log }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- hostplane proxy log ----");
            eprintln!("{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

/// A host API server with the CRDs, a shared Postgres, and `hostplane controller --runtime pods`
/// (namespace `hostplane-system`) with `env` on top. The host runs no kubelet: tests play the
/// Deployment controller with [`mark_deployment_available`].
pub struct PodsBed {
    pub host: KubeApiserver,
    _postgres: hostplane_tests::Postgres,
    _controller: ControllerProcess,
    _tmp: tempfile::TempDir,
}

impl PodsBed {
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let postgres = hostplane_tests::Postgres::start().await;
        let host = host_with_crds().await;
        let tmp = tempfile::tempdir().unwrap();
        let mut all = vec![
            ("HOSTPLANE_RUNTIME", "pods"),
            ("HOSTPLANE_NAMESPACE", "hostplane-system"),
        ];
        all.extend_from_slice(env);
        let controller =
            ControllerProcess::start(&host, tmp.path(), Some(postgres.admin_dsn()), &all);
        Self {
            host,
            _postgres: postgres,
            _controller: controller,
            _tmp: tmp,
        }
    }
}

/// Polls `read` until it gives `Some`, for at most `patience`.
pub async fn eventually<T, F, Fut>(what: &str, patience: Duration, mut read: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + patience;
    loop {
        if let Some(found) = read().await {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the Deployment controller would write once the pod of Deployment `name`'s current spec
/// is available.
pub async fn mark_deployment_available(
    deployments: &Api<k8s_openapi::api::apps::v1::Deployment>,
    name: &str,
) {
    let generation = deployments
        .get(name)
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap();
    let status = serde_json::json!({"status": {
        "observedGeneration": generation,
        "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
        "conditions": [{
            "type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
            "message": "Deployment has minimum availability.",
            "lastTransitionTime": "2026-01-01T00:00:00Z", "lastUpdateTime": "2026-01-01T00:00:00Z"
        }]
    }});
    deployments
        .patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&status),
        )
        .await
        .unwrap();
}

/// The Events on the host about ControlPlane `name`.
pub async fn events_about(
    host: &KubeApiserver,
    name: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    Api::<k8s_openapi::api::events::v1::Event>::all(host.client())
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}
