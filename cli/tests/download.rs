//! End to end: `hostplane proxy` serves tenant kubeconfigs over HTTPS to callers the host
//! cluster authenticates (TokenReview) and authorizes (RBAC on `controlplanes/kubeconfig`);
//! what it hands out is a fresh, short-lived token that plain kubectl uses through the SNI proxy.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hostplane_crds::ControlPlane;
use hostplane_tests::{Binaries, CommandOutput, KubeApiserver, free_port, http_get, run_command};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

const DOMAIN: &str = "tenants.test";
/// The ControlPlane's tokenExpirationSeconds: the cap on any downloaded token.
const TOKEN_LIMIT: i64 = 1800;

/// An answer of the download endpoint.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

/// An HTTPS client trusting only the endpoint's generated CA.
async fn download_client(url: &str, ca_file: &Path) -> kube::Client {
    let mut config = kube::Config::new(url.parse().unwrap());
    config.root_cert = Some(vec![pem_to_der(&std::fs::read_to_string(ca_file).unwrap())]);
    config.read_timeout = Some(Duration::from_secs(60));
    // Each answer as the endpoint gives it: no retries of 503s.
    config.default_retry = false;
    kube::Client::try_from(config).unwrap()
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

async fn get(client: &kube::Client, path: &str, token: Option<&str>) -> Answer {
    let mut request = hyper::Request::get(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = client
        .send(request.body(kube::client::Body::from(Vec::new())).unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.into_body().collect_bytes().await.unwrap();
    Answer {
        status,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn lifetime(kubeconfig: &str) -> i64 {
    let claims = jwt_claims(&kubeconfig_token(kubeconfig));
    claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap()
}

fn kubectl(host: &KubeApiserver, args: &[&str], stdin: Option<&str>) -> String {
    let out = match stdin {
        Some(input) => host.run_kubectl_with_stdin(args, input),
        None => host.run_kubectl(args),
    };
    let what = format!("kubectl {}", args.join(" "));
    out.expect_success(&what)
}

/// A token of a host ServiceAccount, as `kubectl create token` gives it to a person.
fn host_token(host: &KubeApiserver, account: &str) -> String {
    kubectl(
        host,
        &["create", "token", account, "-n", "default", "--duration=1h"],
        None,
    )
    .trim()
    .to_string()
}

/// A kubeconfig for the host whose current context uses `token` (what a person has after
/// `kubectl config set-credentials --token`).
fn token_kubeconfig(host: &KubeApiserver, token: &str, path: &Path) {
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: host\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: person\n  user:\n    token: {token}\ncontexts:\n- name: host\n  context:\n    cluster: host\n    user: person\ncurrent-context: host\n",
        host.url(),
        {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(host.ca_pem())
        }
    );
    std::fs::write(path, yaml).unwrap();
}

fn hostplane(args: &[&str], kubeconfig: &Path) -> CommandOutput {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hostplane"));
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("HOSTPLANE_TOKEN")
        .env_remove("HOSTPLANE_DOWNLOAD_URL");
    run_command(cmd, None)
}

async fn wait_until<F: AsyncFnMut() -> Result<(), String>>(
    what: &str,
    timeout: Duration,
    mut f: F,
) {
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(()) => return,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// What the download endpoint reads, `dl-system/kubeconfig-minter`, holds no key material, and
/// its token may mint tokens for the handed-out account and do nothing else in the tenant.
async fn minter_secret_is_least_privilege(
    host: &KubeApiserver,
    cps: &Api<ControlPlane>,
    dir: &Path,
) {
    let secret = Api::<Secret>::namespaced(host.client(), "dl-system")
        .get("kubeconfig-minter")
        .await
        .expect("the controller writes dl-system/kubeconfig-minter");
    let data = secret.data.unwrap_or_default();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(keys, ["ca.crt", "token"]);
    for (key, value) in &data {
        let text = String::from_utf8_lossy(&value.0);
        assert!(
            !key.ends_with(".key") && !text.contains("PRIVATE KEY"),
            "key material in kubeconfig-minter: {key}"
        );
    }
    let text = |key: &str| String::from_utf8(data[key].0.clone()).unwrap();
    let endpoint = cps
        .get("dl")
        .await
        .unwrap()
        .status
        .unwrap()
        .endpoint
        .unwrap();
    let minter = dir.join("minter.kubeconfig");
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: dl\n  cluster:\n    server: {endpoint}\n    certificate-authority-data: {}\nusers:\n- name: minter\n  user:\n    token: {}\ncontexts:\n- name: dl\n  context:\n    cluster: dl\n    user: minter\ncurrent-context: dl\n",
        {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(text("ca.crt"))
        },
        text("token"),
    );
    std::fs::write(&minter, yaml).unwrap();
    let kubectl_bin = &Binaries::get().kubectl;
    let (ok, out) = kubectl_with(
        kubectl_bin,
        &minter,
        &["create", "token", "hostplane-admin", "-n", "kube-system"],
    );
    assert!(ok, "the minter may not mint the handed-out token: {out}");
    for refused in [
        &["get", "secrets", "-n", "kube-system"][..],
        &["create", "token", "default", "-n", "kube-system"],
        &[
            "create",
            "token",
            "hostplane-kubeconfig-minter",
            "-n",
            "kube-system",
        ],
        &["get", "serviceaccounts", "-n", "kube-system"],
    ] {
        let (ok, out) = kubectl_with(kubectl_bin, &minter, refused);
        assert!(
            !ok && out.to_lowercase().contains("forbidden"),
            "the minter token may {refused:?}: {out}"
        );
    }
}

#[tokio::test]
async fn kubeconfigs_are_downloaded_by_host_rbac_with_fresh_tokens() {
    let host = host_with_crds().await;
    let tmp = tempfile::tempdir().unwrap();
    let proxy_address = format!("127.0.0.1:{}", free_port());
    let download_url = format!("https://127.0.0.1:{}", free_port());
    let metrics_port = free_port();
    let ca_file = tmp.path().join("download-ca.crt");
    // Kine on SQLite: the datastore plays no part here.
    let _controller = ControllerProcess::start(
        &host,
        &tmp.path().join("controller"),
        None,
        &[
            ("HOSTPLANE_PROXY_ADDRESS", &proxy_address),
            ("HOSTPLANE_TENANT_DOMAIN", DOMAIN),
        ],
    );
    // With its download and metrics endpoints.
    let log = tmp.path().join("proxy.log");
    let _proxy = ProxyProcess::start(
        &host,
        log.clone(),
        &[
            "--listen",
            &proxy_address,
            "--tenant-domain",
            DOMAIN,
            "--download-listen",
            download_url.trim_start_matches("https://"),
            "--download-ca-file",
            &ca_file.display().to_string(),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ],
    );

    // Two host identities: one granted the kubeconfig subresource, one with no grant at all.
    kubectl(
        &host,
        &["apply", "-f", "-"],
        Some(&format!(
            r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: reader, namespace: default}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: stranger, namespace: default}}
---
apiVersion: tenancy.hostplane.io/v1alpha1
kind: ControlPlane
metadata: {{name: dl}}
spec: {{type: k8s, tokenExpirationSeconds: {TOKEN_LIMIT}}}
---
apiVersion: tenancy.hostplane.io/v1alpha1
kind: ControlPlane
metadata: {{name: never-ready}}
spec: {{type: k8s, version: "1.1"}}
"#
        )),
    );
    // The grant as the README shows it.
    kubectl(
        &host,
        &[
            "create",
            "clusterrole",
            "kubeconfig-reader",
            "--verb=get",
            "--resource=controlplanes.tenancy.hostplane.io/kubeconfig",
        ],
        None,
    );
    kubectl(
        &host,
        &[
            "create",
            "clusterrolebinding",
            "reader-kubeconfigs",
            "--clusterrole=kubeconfig-reader",
            "--serviceaccount=default:reader",
        ],
        None,
    );
    let rules = kubectl(
        &host,
        &[
            "get",
            "clusterrole",
            "kubeconfig-reader",
            "-o",
            "jsonpath={.rules}",
        ],
        None,
    );
    assert!(
        rules.contains("\"controlplanes/kubeconfig\"") && rules.contains("tenancy.hostplane.io"),
        "{rules}"
    );
    let reader = host_token(&host, "reader");
    let stranger = host_token(&host, "stranger");

    let cps = Api::<ControlPlane>::all(host.client());
    wait_ready_state(&cps, "dl", "True", Some("Available"), READY_TIMEOUT).await;
    wait_ready_state(
        &cps,
        "never-ready",
        "False",
        Some("UnknownVersion"),
        READY_TIMEOUT,
    )
    .await;
    minter_secret_is_least_privilege(&host, &cps, tmp.path()).await;

    // The generated CA is written at start; the endpoint then answers over HTTPS.
    wait_until(
        "the download endpoint's CA file",
        Duration::from_secs(30),
        async || {
            if ca_file.exists() {
                Ok(())
            } else {
                Err(std::fs::read_to_string(&log).unwrap_or_default())
            }
        },
    )
    .await;
    let client = download_client(&download_url, &ca_file).await;
    let path = "/controlplanes/dl/kubeconfig";

    let answer = get(&client, path, None).await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(answer.body.contains("missing bearer token"), "{answer:?}");

    let answer = get(&client, path, Some("garbage")).await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(
        answer.body.contains("did not authenticate this token"),
        "{answer:?}"
    );

    let answer = get(&client, path, Some(&stranger)).await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert!(
        answer.body.contains(
            "user system:serviceaccount:default:stranger may not get controlplanes/kubeconfig for dl"
        ),
        "{answer:?}"
    );

    // The granted identity gets a kubeconfig through the proxy with a token of the asked life.
    let answer = get(&client, &format!("{path}?ttl=900"), Some(&reader)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.content_type, "application/yaml");
    let config: serde_yaml::Value = serde_yaml::from_str(&answer.body).unwrap();
    assert_eq!(
        config["clusters"][0]["cluster"]["server"],
        format!("https://{proxy_address}").as_str()
    );
    assert_eq!(
        config["clusters"][0]["cluster"]["tls-server-name"],
        "dl.tenants.test"
    );
    assert_eq!(lifetime(&answer.body), 900);
    let downloaded = tmp.path().join("dl.kubeconfig");
    std::fs::write(&downloaded, &answer.body).unwrap();
    let kubectl_bin = &Binaries::get().kubectl;
    wait_until(
        "kubectl through the proxy",
        Duration::from_secs(30),
        async || match kubectl_with(kubectl_bin, &downloaded, &["get", "ns", "kube-system"]) {
            (true, _) => Ok(()),
            (false, out) => Err(out),
        },
    )
    .await;

    // Longer than the ControlPlane allows is capped; no ttl means the ControlPlane's.
    let answer = get(&client, &format!("{path}?ttl=86400"), Some(&reader)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(lifetime(&answer.body), TOKEN_LIMIT);
    let answer = get(&client, path, Some(&reader)).await;
    assert_eq!(lifetime(&answer.body), TOKEN_LIMIT);

    let answer = get(&client, &format!("{path}?ttl=5"), Some(&reader)).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(answer.body.contains("at least 600 seconds"), "{answer:?}");
    let answer = get(&client, "/controlplanes/nobody/kubeconfig", Some(&reader)).await;
    assert_eq!(answer.status, 404, "{answer:?}");
    assert!(answer.body.contains("controlplane nobody not found"));
    let answer = get(
        &client,
        "/controlplanes/never-ready/kubeconfig",
        Some(&reader),
    )
    .await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.body.contains("UnknownVersion"), "{answer:?}");

    // The CLI: an explicit token, then the token of the current host kubeconfig context.
    let out_file = tmp.path().join("cli.kubeconfig");
    let out = hostplane(
        &[
            "kubeconfig",
            "dl",
            "--url",
            &download_url,
            "--token",
            &reader,
            "--ca-file",
            &ca_file.display().to_string(),
            "--ttl",
            "1200",
            "-o",
            &out_file.display().to_string(),
        ],
        host.kubeconfig_path(),
    );
    assert!(out.success(), "{}", out.combined());
    let text = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(lifetime(&text), 1200);
    let (ok, ns) = kubectl_with(kubectl_bin, &out_file, &["get", "ns", "default"]);
    assert!(ok, "{ns}");

    let as_reader = tmp.path().join("reader-host.kubeconfig");
    token_kubeconfig(&host, &reader, &as_reader);
    let ca = ca_file.display().to_string();
    let out = hostplane(
        &["kubeconfig", "dl", "--url", &download_url, "--ca-file", &ca],
        &as_reader,
    );
    assert!(out.success(), "{}", out.combined());
    assert_eq!(lifetime(&out.stdout), TOKEN_LIMIT);

    let as_stranger = tmp.path().join("stranger-host.kubeconfig");
    token_kubeconfig(&host, &stranger, &as_stranger);
    let out = hostplane(
        &["kubeconfig", "dl", "--url", &download_url, "--ca-file", &ca],
        &as_stranger,
    );
    assert!(
        !out.success()
            && out.stderr.contains("403")
            && out
                .stderr
                .contains("may not get controlplanes/kubeconfig for dl"),
        "{}",
        out.combined()
    );
    // The host admin kubeconfig holds a client certificate, which the endpoint does not take.
    let out = hostplane(
        &["kubeconfig", "dl", "--url", &download_url, "--ca-file", &ca],
        host.kubeconfig_path(),
    );
    assert!(
        !out.success() && out.stderr.contains("no bearer token"),
        "{}",
        out.combined()
    );
    // Without the CA the endpoint's certificate is not trusted.
    let out = hostplane(
        &[
            "kubeconfig",
            "dl",
            "--url",
            &download_url,
            "--token",
            &reader,
        ],
        host.kubeconfig_path(),
    );
    assert!(!out.success(), "{}", out.combined());

    // Every answer was counted by its code, beside the proxy's own metrics.
    let metrics = scrape_metrics(metrics_port).await;
    for (code, at_least) in [
        ("200", 5),
        ("401", 2),
        ("403", 2),
        ("400", 1),
        ("404", 1),
        ("503", 1),
    ] {
        let series = format!("hostplane_kubeconfig_download_requests_total{{code=\"{code}\"}}");
        let count =
            metric_value(&metrics, &series).unwrap_or_else(|| panic!("no {series} in:\n{metrics}"));
        assert!(count >= at_least as f64, "{series} {count} < {at_least}");
    }
    assert!(
        metrics.contains("hostplane_proxy_connections_total{tenant=\"dl\",result=\"routed\""),
        "{metrics}"
    );
    assert_eq!(
        http_get(metrics_port, "/healthz").await,
        Ok((200, "ok".to_string()))
    );
}
