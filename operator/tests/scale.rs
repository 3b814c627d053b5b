//! Benchmark (ignored by default): 200 ScalingEndpoints applied at once; measures the time from
//! the first apply to all Ready, and the operator's RSS. Needs a cluster, like tests/k8s.rs:
//!
//!   tests/k8s/with-cluster.sh env INFERSCALE_K8S_TESTS=1 \
//!     cargo test --release -p inferscale-operator --test scale -- --ignored --nocapture
//!
//! `SCALE_ENDPOINTS` changes the count; `SCALE_KEEP_NAMESPACE=1` keeps the objects afterwards.
//! Where the time goes: the CPU seconds the operator and every control-plane process recorded by
//! cluster-up.sh in `$STATE/pids` (etcd, kube-apiserver, kube-controller-manager, ...) spent from
//! the first apply until all were Ready, read from /proc. Results are recorded in BENCHMARKS.md.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use inferscale_operator::crd::ScalingEndpoint;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

#[tokio::test]
#[ignore = "benchmark: run with --ignored against a cluster"]
async fn endpoints_converge_at_scale() {
    if !enabled("endpoints_converge_at_scale") {
        return;
    }
    let count: usize = std::env::var("SCALE_ENDPOINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "scale").await;
    let op = Operator::start(&ns.name);
    apply_manifest(
        &client,
        &ns.name,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: openai}\nstringData: {api-key: sk-bench}\n",
    )
    .await;
    let ses: Api<ScalingEndpoint> = ns.api();
    // Idle: leading, caches synced (the Secret's reconcile-free watch is up), nothing to do yet.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = ns.api();
    let pid = op.pid();
    eventually("the operator to lead", Duration::from_secs(60), || {
        let leases = leases.clone();
        async move {
            let holder = leases
                .get_opt("inferscale-operator")
                .await
                .map_err(|e| e.to_string())?
                .and_then(|l| l.spec.and_then(|s| s.holder_identity))
                .unwrap_or_default();
            holder
                .ends_with(&format!("-{pid}"))
                .then_some(())
                .ok_or(holder)
        }
    })
    .await;
    let idle_rss = op.rss_kib();

    let mut cpu_watch = control_plane_processes();
    cpu_watch.push(("inferscale-operator".to_string(), pid));
    let cpu_before: Vec<Option<f64>> = cpu_watch.iter().map(|(_, p)| cpu_seconds(*p)).collect();
    let start = Instant::now();
    // Apply like `kubectl apply -f` of a big directory would: many requests in flight.
    futures_util::stream::iter(0..count)
        .for_each_concurrent(16, |i| {
            let ses = ses.clone();
            async move {
                let name = format!("ep-{i:03}");
                let obj = json!({
                    "apiVersion": "inferscale.dev/v1alpha1",
                    "kind": "ScalingEndpoint",
                    "metadata": {"name": name},
                    "spec": {
                        "model": {"name": "gpt-4o-mini", "provider": "openai",
                                  "apiKeySecretRef": {"name": "openai", "key": "api-key"}},
                        "algorithm": {"name": "self-consistency", "defaultBudget": 3 + (i % 5)},
                    }
                });
                ses.patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&obj),
                )
                .await
                .unwrap_or_else(|e| panic!("apply {name}: {e}"));
            }
        })
        .await;
    let applied = start.elapsed();

    let mut peak_rss = 0;
    // When every endpoint has its children applied (ConfigValid for its generation): the
    // operator's own share of the convergence; the rest is the Deployment/ReplicaSet controllers,
    // the scheduler and kwok.
    let applied_all = std::sync::Mutex::new(None::<Duration>);
    let ready_after = eventually(
        &format!("{count} endpoints Ready"),
        Duration::from_secs(600),
        || {
            let ses = ses.clone();
            let applied_all = &applied_all;
            let rss = op.rss_kib();
            if let Some((cur, _)) = rss {
                peak_rss = peak_rss.max(cur);
            }
            async move {
                let list = ses
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let current = |se: &ScalingEndpoint| {
                    se.status.as_ref().and_then(|s| s.observed_generation) == se.metadata.generation
                };
                let valid = list
                    .items
                    .iter()
                    .filter(|se| {
                        current(se) && condition(se, "ConfigValid").is_some_and(|c| c.0 == "True")
                    })
                    .count();
                if valid == count {
                    let mut a = applied_all.lock().unwrap_or_else(|p| p.into_inner());
                    a.get_or_insert_with(|| start.elapsed());
                }
                let ready = list
                    .items
                    .iter()
                    .filter(|se| {
                        se.status.as_ref().and_then(|s| s.observed_generation)
                            == se.metadata.generation
                            && condition(se, "Ready").is_some_and(|c| c.0 == "True")
                    })
                    .count();
                (ready == count)
                    .then(|| start.elapsed())
                    .ok_or_else(|| format!("{ready}/{count} Ready after {:?}", start.elapsed()))
            }
        },
    )
    .await;
    let (rss, hwm) = op.rss_kib().unwrap_or_default();
    let cpu_spent: Vec<String> = cpu_watch
        .iter()
        .zip(&cpu_before)
        .filter_map(|((name, p), before)| {
            Some(format!("{name}={:.1}s", cpu_seconds(*p)? - (*before)?))
        })
        .collect();
    let children_applied = applied_all
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or(ready_after);

    println!(
        "BENCH endpoints={count} applied_in={:.2}s children_applied_in={:.2}s all_ready_in={:.2}s operator_rss_idle_kib={} operator_rss_end_kib={} operator_rss_peak_sampled_kib={} operator_vmhwm_kib={}",
        applied.as_secs_f64(),
        children_applied.as_secs_f64(),
        ready_after.as_secs_f64(),
        idle_rss.map(|r| r.0).unwrap_or_default(),
        rss,
        peak_rss.max(rss),
        hwm,
    );
    println!(
        "BENCH cpu_seconds_from_first_apply_to_all_ready {}",
        cpu_spent.join(" ")
    );
    // SCALE_KEEP_NAMESPACE=1 leaves the objects for inspection (e.g. pod timelines).
    if std::env::var("SCALE_KEEP_NAMESPACE").as_deref() != Ok("1") {
        ns.delete().await;
    }
}

/// The control-plane processes cluster-up.sh recorded ("name pid exe" lines in `$STATE/pids`);
/// empty when the cluster was not started by tests/k8s (then only the operator is measured).
fn control_plane_processes() -> Vec<(String, u32)> {
    let Some(state) = std::env::var_os("STATE") else {
        return Vec::new();
    };
    let pids =
        std::fs::read_to_string(std::path::Path::new(&state).join("pids")).unwrap_or_default();
    pids.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?.to_string();
            let pid = fields.next()?.parse().ok()?;
            Some((name, pid))
        })
        .collect()
}

/// utime + stime of a process in seconds (fields 14 and 15 of /proc/PID/stat, counted after the
/// parenthesised command name, which may contain spaces).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state), so field N is at index N - 3.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel's USER_HZ is 100 on every Linux architecture this runs on.
    Some(ticks as f64 / 100.0)
}
