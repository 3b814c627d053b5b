//! Helpers of the integration tests: they run against a real control plane (see tests/k8s/) and
//! are skipped unless `KUBECONFIG` is set and `INFERSCALE_K8S_TESTS=1`.
#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use inferscale_operator::crd::ScalingEndpoint;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams,
};
use kube::{Client, Resource, ResourceExt};

pub const MANAGER: &str = "inferscale-tests";

/// True when the cluster tests should run; prints why they are skipped otherwise.
pub fn enabled(test: &str) -> bool {
    let on = std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty())
        && std::env::var("INFERSCALE_K8S_TESTS").as_deref() == Ok("1");
    if !on {
        // Written to the stderr handle directly: libtest captures `eprintln!` of passing tests, and
        // a skip should be visible.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP {test}: needs a cluster. Run: tests/k8s/with-cluster.sh env INFERSCALE_K8S_TESTS=1 cargo test -p inferscale-operator"
        );
    }
    on
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

pub async fn client() -> Client {
    Client::try_default()
        .await
        .expect("a kube client from KUBECONFIG")
}

/// Polls `f` until it returns `Ok`, or panics after `timeout` with the last reason.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last state: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for a Warning Event in `ns` with `reason`, about object `regarding` (its name), whose
/// note contains `note_contains`.
pub async fn wait_for_warning(
    ns: &TestNamespace,
    reason: &str,
    regarding: &str,
    note_contains: &str,
    timeout: Duration,
) {
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    eventually(
        &format!("a {reason} Warning Event about {regarding} naming {note_contains:?}"),
        timeout,
        || {
            let events = events.clone();
            async move {
                let list = events
                    .list(&Default::default())
                    .await
                    .map_err(|e| e.to_string())?;
                list.items
                    .iter()
                    .any(|e| {
                        e.reason.as_deref() == Some(reason)
                            && e.type_.as_deref() == Some("Warning")
                            && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                                == Some(regarding)
                            && e.note.as_deref().is_some_and(|n| n.contains(note_contains))
                    })
                    .then_some(())
                    .ok_or_else(|| format!("{} events, none matching", list.items.len()))
            }
        },
    )
    .await;
}

/// Installs the committed CRD (the file users apply) and waits until it is served.
pub async fn install_crd(client: &Client) {
    let text = std::fs::read_to_string(repo_path("crds/scalingendpoints.inferscale.dev.yaml"))
        .expect("committed CRD");
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("CRD parses");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &crd.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("CRD applies");
    let name = crd.name_any();
    eventually("the CRD to be Established", Duration::from_secs(30), || {
        let api = api.clone();
        let name = name.clone();
        async move {
            let crd = api.get(&name).await.map_err(|e| e.to_string())?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established
                .then_some(())
                .ok_or_else(|| "not established".to_owned())
        }
    })
    .await;
    // The discovery cache of the API server may lag the condition a little.
    let se: Api<ScalingEndpoint> = Api::all(client.clone());
    eventually(
        "ScalingEndpoints to be served",
        Duration::from_secs(30),
        || {
            let se = se.clone();
            async move {
                se.list(&Default::default())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await;
}

/// A namespace of one test.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let prefix = prefix.trim_matches('-');
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "t-{prefix}-{:x}{:x}",
            std::process::id() % 4096,
            nanos % 65536
        );
        let api: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("inferscale.dev/test".to_owned(), prefix.to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .expect("namespace created");
        Self {
            name,
            client: client.clone(),
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Deletes the namespace (on success paths; a failed test leaves it for inspection).
    pub async fn delete(self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let _ = api.delete(&self.name, &DeleteParams::default()).await;
    }
}

/// The operator binary: `INFERSCALE_OPERATOR_BIN` when set (a copy taken right after the build,
/// for when several worktrees share one target directory and its uplifted binary), else Cargo's.
fn operator_bin() -> PathBuf {
    std::env::var_os("INFERSCALE_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_inferscale-operator")))
}

/// The operator binary running as a child process of the test; killed when dropped (also on
/// panic), and its log printed when the test failed.
pub struct Operator {
    child: Child,
    pub log: PathBuf,
}

impl Operator {
    pub fn start(namespace: &str) -> Self {
        Self::start_with(namespace, &[])
    }

    pub fn start_with(namespace: &str, extra: &[&str]) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("operator-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{namespace}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(operator_bin())
            .args([
                "run",
                "--namespace",
                namespace,
                "--leader-election-namespace",
                namespace,
                "--metrics-addr",
                "127.0.0.1:0",
                "--worker-image",
                "inferscale/worker:test",
                "--log-format",
                "text",
            ])
            .args(extra)
            .env("RUST_LOG", "info,inferscale_operator=debug")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("operator starts");
        Self { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still the same, running process (the operator was not restarted).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident set size in KiB and its peak (VmRSS, VmHWM).
    pub fn rss_kib(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("---- operator log tail ({}) ----", self.log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn api_resource_of(obj: &DynamicObject) -> ApiResource {
    let types = obj.types.as_ref().expect("apiVersion and kind");
    match types.kind.as_str() {
        "Secret" => ApiResource::erase::<Secret>(&()),
        "ScalingEndpoint" => ApiResource::erase::<ScalingEndpoint>(&()),
        other => panic!("examples only hold Secrets and ScalingEndpoints, not {other}"),
    }
}

/// Parses a multi-document manifest.
pub fn documents(text: &str) -> Vec<DynamicObject> {
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|doc| {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc).expect("YAML parses");
            (!v.is_null()).then(|| serde_json::from_value(v).expect("a Kubernetes object"))
        })
        .collect()
}

/// Applies every object of a manifest into a namespace (server-side apply, like
/// `kubectl apply --server-side -n NS -f FILE`).
pub async fn apply_manifest(client: &Client, ns: &str, text: &str) -> Vec<DynamicObject> {
    let mut applied = Vec::new();
    for obj in documents(text) {
        let ar = api_resource_of(&obj);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        let name = obj.name_any();
        let out = api
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap_or_else(|e| panic!("applying {} {name}: {e}", ar.kind));
        applied.push(out);
    }
    applied
}

/// Enforces the restricted Pod Security Standard on a namespace, as the docs promise every pod
/// the operator creates passes it.
pub async fn enforce_restricted_pod_security(client: &Client, ns: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let labels = serde_json::json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    namespaces
        .patch(ns, &PatchParams::default(), &Patch::Merge(labels))
        .await
        .unwrap();
}

pub fn read_example(name: &str) -> String {
    std::fs::read_to_string(repo_path(&format!("deploy/examples/{name}.yaml")))
        .expect("example exists")
}

/// The condition `type_` of an endpoint as (status, reason, message).
pub fn condition(se: &ScalingEndpoint, type_: &str) -> Option<(String, String, String)> {
    se.condition(type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the endpoint is Ready for its current generation, and returns it.
pub async fn wait_ready(
    api: &Api<ScalingEndpoint>,
    name: &str,
    timeout: Duration,
) -> ScalingEndpoint {
    eventually(
        &format!("ScalingEndpoint {name} to be Ready"),
        timeout,
        || {
            let api = api.clone();
            let name = name.to_owned();
            async move {
                let se = api.get(&name).await.map_err(|e| e.to_string())?;
                let status = se.status.clone().unwrap_or_default();
                let ready = condition(&se, "Ready");
                if status.observed_generation == se.metadata.generation
                    && ready.as_ref().is_some_and(|r| r.0 == "True")
                {
                    Ok(se)
                } else {
                    Err(format!(
                        "generation {:?}, observed {:?}, Ready {:?}",
                        se.metadata.generation, status.observed_generation, ready
                    ))
                }
            }
        },
    )
    .await
}
