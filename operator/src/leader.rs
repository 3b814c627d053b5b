//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager, which supports kube 5).
//!
//! Only the leader runs the controller. A replica that loses the Lease stops reconciling and exits
//! non-zero, so its pod restarts as a clean standby (the controller-runtime behaviour); on shutdown
//! the leader releases the Lease so a standby takes over at once instead of after expiry.

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Seconds a Lease stays valid without renewal.
const LEASE_DURATION_SECS: u64 = 15;
/// Seconds before expiry at which the holder renews.
const LEASE_GRACE_SECS: u64 = 5;

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
}

/// A running election: `leading` turns true when this replica holds the Lease.
pub struct Election {
    pub leading: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

impl Election {
    pub async fn start(client: Client, s: &LeaseSettings) -> Result<Self, LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client, &s.name)
            .with_namespace(&s.namespace)
            .with_identity(&s.identity)
            .with_duration(LEASE_DURATION_SECS)
            .with_grace(LEASE_GRACE_SECS)
            .with_field_manager(format!("inferscale-operator-lease-{}", s.identity))
            .build()
            .await?;
        let (leading, task) = manager.watch().await;
        Ok(Self { leading, task })
    }

    /// Resolves when this replica holds the Lease; `Err` when the election task ended.
    pub async fn acquired(&mut self) -> Result<(), watch::error::RecvError> {
        loop {
            if *self.leading.borrow_and_update() {
                return Ok(());
            }
            self.leading.changed().await?;
        }
    }

    /// Releases the Lease (if held) and waits for the election task, at most a few seconds.
    pub async fn release(self) {
        // Dropping the receiver makes the manager release the Lease and end its task.
        drop(self.leading);
        match tokio::time::timeout(std::time::Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("leader Lease released"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "leader Lease not released cleanly"),
            Ok(Err(e)) => tracing::warn!(error = %e, "leader election task failed"),
            Err(_) => tracing::warn!("timed out releasing the leader Lease"),
        }
    }
}

/// Resolves when a held Lease is lost.
pub async fn lost(mut leading: watch::Receiver<bool>) {
    loop {
        if !*leading.borrow_and_update() {
            return;
        }
        if leading.changed().await.is_err() {
            return;
        }
    }
}
